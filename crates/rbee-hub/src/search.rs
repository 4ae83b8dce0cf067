//! `GET /api/models?search=…&sort=downloads`: the hub's model search.

use serde::{Deserialize, Serialize};

use crate::{Hub, HubError, MAX_JSON};

/// The most results one search asks for.
pub const MAX_SEARCH_LIMIT: usize = 100;

/// One search result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SearchHit {
    pub id: String,
    pub downloads: u64,
    pub likes: u64,
    /// The repo has GGUF files (by its `gguf` tag or its file list).
    pub gguf: bool,
}

#[derive(Deserialize)]
struct RawHit {
    id: Option<String>,
    #[serde(rename = "modelId")]
    model_id: Option<String>,
    #[serde(default)]
    downloads: u64,
    #[serde(default)]
    likes: u64,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    siblings: Vec<RawSibling>,
}

#[derive(Deserialize)]
struct RawSibling {
    rfilename: String,
}

impl Hub {
    /// Models matching `query`, most downloaded first; with `gguf_only`, only repos with GGUF
    /// files. `limit` is clamped to 1..=[`MAX_SEARCH_LIMIT`].
    pub fn search(
        &self,
        query: &str,
        gguf_only: bool,
        limit: usize,
    ) -> Result<Vec<SearchHit>, HubError> {
        let query = query.trim();
        if query.is_empty() || query.len() > 200 {
            return Err(HubError::Invalid(
                "a search needs a query of 1 to 200 characters".into(),
            ));
        }
        let limit = limit.clamp(1, MAX_SEARCH_LIMIT);
        let url = format!("{}/api/models", self.endpoint);
        let mut req = self
            .agent
            .get(&url)
            .query("search", query)
            .query("sort", "downloads")
            .query("direction", "-1")
            .query("limit", limit.to_string());
        if gguf_only {
            req = req.query("filter", "gguf");
        }
        let mut resp = self
            .with_auth(&url, req)
            .call()
            .map_err(|e| HubError::transport(&self.endpoint, e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(HubError::Status {
                status,
                what: format!("the search for `{query}`"),
            });
        }
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_JSON)
            .read_to_vec()
            .map_err(|e| HubError::BadResponse(format!("search: {e}")))?;
        parse_hits(&bytes, gguf_only, limit)
    }
}

fn parse_hits(bytes: &[u8], gguf_only: bool, limit: usize) -> Result<Vec<SearchHit>, HubError> {
    let raw: Vec<RawHit> = serde_json::from_slice(bytes)
        .map_err(|e| HubError::BadResponse(format!("search results: {e}")))?;
    let mut hits: Vec<SearchHit> = raw
        .into_iter()
        .filter_map(|h| Some((h.id.clone().or(h.model_id.clone())?, h)))
        .map(|(id, h)| SearchHit {
            gguf: h.tags.iter().any(|t| t.eq_ignore_ascii_case("gguf"))
                || h.siblings
                    .iter()
                    .any(|s| s.rfilename.to_ascii_lowercase().ends_with(".gguf")),
            id: id.chars().take(200).collect(),
            downloads: h.downloads,
            likes: h.likes,
        })
        .filter(|h| h.gguf || !gguf_only)
        .collect();
    hits.sort_by(|a, b| b.downloads.cmp(&a.downloads).then(a.id.cmp(&b.id)));
    hits.truncate(limit);
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_are_sorted_filtered_and_capped() {
        let body = br#"[
            {"id":"a/x","downloads":5,"likes":1,"tags":["gguf"]},
            {"modelId":"b/y","downloads":50,"likes":2,"tags":[]},
            {"id":"c/z","downloads":9,"siblings":[{"rfilename":"m.Q4_K_M.gguf"}]}
        ]"#;
        let all = parse_hits(body, false, 10).unwrap();
        assert_eq!(
            all.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
            ["b/y", "c/z", "a/x"]
        );
        assert!(!all[0].gguf && all[1].gguf && all[2].gguf);
        let gguf = parse_hits(body, true, 1).unwrap();
        assert_eq!(gguf.len(), 1);
        assert_eq!(gguf[0].id, "c/z");
        assert!(parse_hits(b"{\"not\":\"a list\"}", false, 1).is_err());
    }
}
