//! safetensors headers: a round trip, and one test per way a header can be wrong.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::{safetensors_file, st_read, st_read_err};
use rbee_format::safetensors::*;

#[test]
fn a_well_formed_header_reads_into_the_typed_table() {
    // Written out of data order, with metadata and a scalar.
    let json = r#"{"b":{"dtype":"BF16","shape":[2,3],"data_offsets":[16,28]},
        "__metadata__":{"format":"pt","note":"x"},
        "a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},
        "s":{"dtype":"I64","shape":[],"data_offsets":[28,36]},
        "empty":{"dtype":"U8","shape":[0,5],"data_offsets":[36,36]}}"#;
    let bytes = safetensors_file(json, 36);
    let h = st_read(&bytes).unwrap();
    let names: Vec<&str> = h.tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a", "b", "s", "empty"], "in data order");
    assert_eq!(h.data_offset, 8 + json.len() as u64);
    assert_eq!(h.file_size, bytes.len() as u64);
    assert_eq!(
        h.metadata.iter().collect::<Vec<_>>(),
        [
            (&"format".to_string(), &"pt".to_string()),
            (&"note".to_string(), &"x".to_string())
        ]
    );
    let b = h.tensor("b").unwrap();
    assert_eq!(
        b,
        &TensorEntry {
            dtype: Dtype::BF16,
            shape: vec![2, 3],
            data_offsets: [16, 28],
        }
    );
    assert_eq!((b.n_elements(), b.size()), (6, 12));
    assert_eq!(h.file_range(b), [h.data_offset + 16, h.data_offset + 28]);
    assert_eq!(h.tensor("s").unwrap().n_elements(), 1);
    assert_eq!(h.tensor("empty").unwrap().size(), 0);
    assert!(h.tensor("nope").is_none());

    // No metadata, no tensors: still a well-formed (empty) file.
    let h = st_read(&safetensors_file("{}", 0)).unwrap();
    assert!(h.tensors.is_empty() && h.metadata.is_empty());
}

#[test]
fn every_dtype_has_its_name_and_size() {
    let all = [
        ("BOOL", 1),
        ("U8", 1),
        ("I8", 1),
        ("F8_E4M3", 1),
        ("F8_E5M2", 1),
        ("U16", 2),
        ("I16", 2),
        ("F16", 2),
        ("BF16", 2),
        ("U32", 4),
        ("I32", 4),
        ("F32", 4),
        ("U64", 8),
        ("I64", 8),
        ("F64", 8),
    ];
    for (name, size) in all {
        let d = Dtype::from_name(name).unwrap();
        assert_eq!(
            (d.name(), d.size(), d.to_string()),
            (name, size, name.into())
        );
        let json = format!(
            r#"{{"t":{{"dtype":"{name}","shape":[3],"data_offsets":[0,{}]}}}}"#,
            3 * size
        );
        let h = st_read(&safetensors_file(&json, 3 * size)).unwrap();
        assert_eq!(h.tensors[0].1.dtype, d);
    }
    assert_eq!(Dtype::from_name("bf16"), None);
    assert_eq!(Dtype::from_name("F128"), None);
}

#[test]
fn open_reads_a_file_and_names_one_it_cannot_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let json = r#"{"w":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]}}"#;
    std::fs::write(&path, safetensors_file(json, 8)).unwrap();
    let h = SafetensorsHeader::open(&path).unwrap();
    assert_eq!(h.tensor("w").unwrap().shape, [2, 2]);
    let err = SafetensorsHeader::open(&dir.path().join("nope.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("cannot open ") && err.contains("nope.safetensors"),
        "{err}"
    );
}

#[test]
fn header_length_and_truncation() {
    assert_eq!(
        st_read_err(&[1, 0, 0]),
        "file is shorter than the 8-byte header length"
    );
    let good = safetensors_file(
        r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#,
        2,
    );
    let with_len = |len: u64| {
        let mut b = good.clone();
        b[..8].copy_from_slice(&len.to_le_bytes());
        st_read_err(&b)
    };
    let size = good.len();
    assert_eq!(
        with_len(size as u64 - 7),
        format!(
            "header length {} is larger than the file ({size} bytes) or the 100 MB limit",
            size - 7
        )
    );
    assert_eq!(
        with_len(u64::MAX),
        format!(
            "header length 18446744073709551615 is larger than the file ({size} bytes) or the 100 MB limit"
        )
    );
    // Past the cap even when the caller claims a huge file.
    let mut b = good.clone();
    b[..8].copy_from_slice(&(MAX_HEADER_LEN + 1).to_le_bytes());
    assert_eq!(
        SafetensorsHeader::read(std::io::Cursor::new(&b), u64::MAX)
            .unwrap_err()
            .to_string(),
        "header length 104857601 is larger than the file (18446744073709551615 bytes) or the 100 MB limit"
    );
    // A reader that ends before the size it was said to have.
    assert_eq!(
        SafetensorsHeader::read(std::io::Cursor::new(&good[..20]), good.len() as u64)
            .unwrap_err()
            .to_string(),
        format!(
            "truncated file: the {}-byte header ends after 12 bytes",
            good.len() - 10
        )
    );
    // A length that stops inside the JSON.
    assert!(
        with_len(10).starts_with("invalid header: "),
        "{}",
        with_len(10)
    );
}

#[test]
fn json_that_is_not_a_table_is_refused_naming_the_key() {
    let err = |json: &str| st_read_err(&safetensors_file(json, 0));
    assert!(
        err("[]").starts_with(
            "invalid header: invalid type: sequence, expected a JSON object of tensors"
        ),
        "{}",
        err("[]")
    );
    assert!(
        err("{").starts_with("invalid header: EOF while parsing"),
        "{}",
        err("{")
    );
    assert!(err("{} x").starts_with("invalid header: trailing characters"));
    // Padding with spaces, as the reference writer does, is fine.
    assert!(st_read(&safetensors_file("{}      ", 0)).is_ok());

    let e = err(r#"{"w":{"dtype":"F32","shape":"32","data_offsets":[0,0]}}"#);
    assert!(
        e.starts_with(
            "invalid header: tensor `w`: invalid type: string \"32\", expected a list of at most 64 sizes"
        ),
        "{e}"
    );
    let e = err(r#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}"#);
    assert!(
        e.starts_with("invalid header: tensor `w`: invalid value: integer `-1`"),
        "{e}"
    );
    let e = err(r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}}"#);
    assert!(
        e.starts_with("invalid header: tensor `w`: invalid length 1"),
        "{e}"
    );
    let e = err(r#"{"w":{"dtype":5,"shape":[1],"data_offsets":[0,4]}}"#);
    assert!(
        e.starts_with("invalid header: tensor `w`: invalid type: integer `5`"),
        "{e}"
    );
    let e = err(r#"{"w":{"shape":[1],"data_offsets":[0,4]}}"#);
    assert!(
        e.starts_with("invalid header: tensor `w`: missing field `dtype`"),
        "{e}"
    );
    let e = err(r#"{"__metadata__":[1,2]}"#);
    assert!(
        e.starts_with("invalid header: __metadata__: invalid type: sequence"),
        "{e}"
    );
    let e = err(r#"{"__metadata__":{"n":1}}"#);
    assert!(
        e.starts_with("invalid header: __metadata__: invalid type: integer `1`"),
        "{e}"
    );
    let e = err(r#"{"__metadata__":{},"__metadata__":{}}"#);
    assert!(
        e.starts_with("invalid header: __metadata__: appears twice"),
        "{e}"
    );

    // A shape longer than any tensor has is refused before it grows.
    let dims = vec!["1"; MAX_DIMS + 1].join(",");
    let e = err(&format!(
        r#"{{"w":{{"dtype":"U8","shape":[{dims}],"data_offsets":[0,1]}}}}"#
    ));
    assert!(
        e.starts_with("invalid header: tensor `w`: shape has more than 64 dimensions"),
        "{e}"
    );
    let dims = vec!["1"; MAX_DIMS].join(",");
    let ok = format!(r#"{{"w":{{"dtype":"U8","shape":[{dims}],"data_offsets":[0,1]}}}}"#);
    assert!(st_read(&safetensors_file(&ok, 1)).is_ok());
}

#[test]
fn tensors_that_do_not_fit_are_refused_naming_them() {
    let one = |dtype: &str, shape: &str, offsets: &str, data: u64| {
        let json =
            format!(r#"{{"w":{{"dtype":"{dtype}","shape":{shape},"data_offsets":{offsets}}}}}"#);
        st_read_err(&safetensors_file(&json, data))
    };
    assert_eq!(
        one("F128", "[1]", "[0,16]", 16),
        "tensor `w` has unknown dtype \"F128\""
    );
    assert_eq!(
        one("", "[1]", "[0,1]", 1),
        "tensor `w` has unknown dtype \"\""
    );
    assert_eq!(
        one("F32", "[4294967296,4294967296]", "[0,0]", 0),
        "tensor `w` shape [4294967296, 4294967296] overflows"
    );
    // Elements fit, bytes do not.
    assert_eq!(
        one("F32", "[4611686018427387904]", "[0,0]", 0),
        "tensor `w` shape [4611686018427387904] overflows"
    );
    assert_eq!(
        one("F32", "[2]", "[0,8]", 7),
        "tensor `w` data 0..8 does not fit 2 F32 values inside the 7-byte data section"
    );
    assert_eq!(
        one("F32", "[2]", "[8,0]", 8),
        "tensor `w` data 8..0 does not fit 2 F32 values inside the 8-byte data section"
    );
    assert_eq!(
        one("F32", "[3]", "[0,8]", 8),
        "tensor `w` data 0..8 does not fit 3 F32 values inside the 8-byte data section"
    );
    // Offsets near u64::MAX must not wrap around.
    assert_eq!(
        one(
            "U8",
            "[1]",
            "[18446744073709551615,18446744073709551615]",
            1
        ),
        "tensor `w` data 18446744073709551615..18446744073709551615 does not fit 1 U8 values inside the 1-byte data section"
    );
}

#[test]
fn duplicates_overlaps_and_holes_are_refused() {
    // serde_json's map would keep only the last of two equal keys; the reader sees both.
    let dup = r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},
                  "a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
    assert_eq!(
        st_read_err(&safetensors_file(dup, 2)),
        "duplicate tensor name `a`"
    );
    let overlap = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},
                      "b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#;
    assert_eq!(
        st_read_err(&safetensors_file(overlap, 6)),
        "tensors `a` and `b` overlap"
    );
    let same = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},
                   "b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
    assert_eq!(
        st_read_err(&safetensors_file(same, 4)),
        "tensors `a` and `b` overlap"
    );
    let hole = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},
                   "b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}"#;
    assert_eq!(
        st_read_err(&safetensors_file(hole, 6)),
        "bytes 2..4 of the 6-byte data section belong to no tensor (the format allows no holes)"
    );
    let leading = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}"#;
    assert_eq!(
        st_read_err(&safetensors_file(leading, 3)),
        "bytes 0..1 of the 3-byte data section belong to no tensor (the format allows no holes)"
    );
    let trailing = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#;
    assert_eq!(
        st_read_err(&safetensors_file(trailing, 5)),
        "bytes 2..5 of the 5-byte data section belong to no tensor (the format allows no holes)"
    );
    assert_eq!(
        st_read_err(&safetensors_file("{}", 1)),
        "bytes 0..1 of the 1-byte data section belong to no tensor (the format allows no holes)"
    );
}
