//! The devices a node offers (`--devices`): the CPU, CUDA and Metal GPUs, and simulated GPUs
//! for tests and demos. Each offered device gets one worker with its own memory budget; this
//! module decides which devices exist and what each budget is, at start.

use std::fmt;
use std::str::FromStr;

use rbee_infer::engine::LoadOptions;

use crate::units::parse_bytes;

/// One device a node may offer.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    Metal(usize),
    /// A simulated GPU: announced and budgeted as a GPU of `bytes`, computed on the CPU with
    /// the device runtime (the code a GPU runs). For tests of placement and routing by VRAM on
    /// machines without a GPU, and for demos.
    Simulated {
        index: usize,
        bytes: u64,
    },
}

impl DeviceSpec {
    /// Its name in status, logs and the pool (`cpu`, `cuda:0`, `sim:1`).
    pub fn name(&self) -> String {
        match self {
            DeviceSpec::Cpu => "cpu".into(),
            DeviceSpec::Cuda(i) => format!("cuda:{i}"),
            DeviceSpec::Metal(i) => format!("metal:{i}"),
            DeviceSpec::Simulated { index, .. } => format!("sim:{index}"),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Simulated { index, bytes } => write!(f, "sim:{index}={bytes}"),
            other => f.write_str(&other.name()),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let usage = "a device is `cpu`, `cuda:N`, `metal:N` or `sim:N=SIZE` (a simulated GPU, e.g. sim:0=8GiB)";
        let index = |i: &str| {
            i.parse::<usize>()
                .map_err(|_| format!("`{s}`: `{i}` is not a device index; {usage}"))
        };
        if s == "cpu" {
            return Ok(DeviceSpec::Cpu);
        }
        if let Some(i) = s.strip_prefix("cuda:") {
            return Ok(DeviceSpec::Cuda(index(i)?));
        }
        if let Some(i) = s.strip_prefix("metal:") {
            return Ok(DeviceSpec::Metal(index(i)?));
        }
        if let Some(rest) = s.strip_prefix("sim:") {
            let (i, size) = rest.split_once('=').ok_or_else(|| {
                format!("`{s}`: a simulated GPU needs its memory, e.g. sim:0=8GiB")
            })?;
            let bytes = parse_bytes(size).map_err(|e| format!("`{s}`: {e}"))?;
            return Ok(DeviceSpec::Simulated {
                index: index(i)?,
                bytes,
            });
        }
        Err(format!("unknown device `{s}`: {usage}"))
    }
}

/// Parses a comma-separated device list (`cpu,cuda:0`), refusing duplicates.
pub fn parse_list(s: &str) -> Result<Vec<DeviceSpec>, String> {
    let mut out: Vec<DeviceSpec> = Vec::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let d: DeviceSpec = part.parse()?;
        if out.iter().any(|o| o.name() == d.name()) {
            return Err(format!("device `{}` is listed twice", d.name()));
        }
        out.push(d);
    }
    if out.is_empty() {
        return Err("no devices given: list at least one, e.g. --devices cpu".into());
    }
    if out.len() > rbee_proto::pool::MAX_DEVICES {
        return Err(format!(
            "{} devices listed; a node offers at most {}",
            out.len(),
            rbee_proto::pool::MAX_DEVICES
        ));
    }
    Ok(out)
}

/// A device the node offers, ready for its worker.
#[derive(Debug, Clone)]
pub struct Offered {
    pub name: String,
    pub budget: u64,
    /// How models load there: the candle device, and whether the device runtime runs on the
    /// CPU (simulated GPUs).
    pub load: LoadOptions,
    pub is_gpu: bool,
}

/// The devices to offer: those asked for (`None`: the CPU, plus every GPU this build can see),
/// each with its budget. The CPU's is `cpu_budget`; a GPU's is what its driver reports free at
/// start minus `gpu_reserve`. A GPU that cannot be opened is left out with one warning: the
/// node runs on what it has.
pub fn offer(
    asked: Option<&[DeviceSpec]>,
    cpu_budget: u64,
    gpu_reserve: u64,
    base: &LoadOptions,
) -> Vec<Offered> {
    let wanted: Vec<DeviceSpec> = match asked {
        Some(list) => list.to_vec(),
        None => {
            let mut all = vec![DeviceSpec::Cpu];
            all.extend(gpu::detect());
            all
        }
    };
    let mut out = Vec::new();
    for spec in wanted {
        let name = spec.name();
        let offered = match spec {
            DeviceSpec::Cpu => Ok(Offered {
                name,
                budget: cpu_budget,
                load: base.clone(),
                is_gpu: false,
            }),
            DeviceSpec::Simulated { bytes, .. } => Ok(Offered {
                load: LoadOptions {
                    device_runtime_on_cpu: true,
                    device_name: Some(name.clone()),
                    ..base.clone()
                },
                name,
                budget: bytes,
                is_gpu: true,
            }),
            DeviceSpec::Cuda(_) | DeviceSpec::Metal(_) => {
                gpu::open(&spec).map(|(device, free)| Offered {
                    name,
                    budget: free.saturating_sub(gpu_reserve),
                    load: LoadOptions {
                        device,
                        ..base.clone()
                    },
                    is_gpu: true,
                })
            }
        };
        match offered {
            Ok(o) => {
                tracing::info!(device = %o.name, budget = o.budget, "offering device");
                out.push(o);
            }
            Err(why) => tracing::warn!("not offering {why}"),
        }
    }
    out
}

/// The GPU probes (the engine opens candle's devices).
mod gpu {
    use super::DeviceSpec;
    use rbee_infer::devices::{Device, open_cuda, open_metal};

    /// GPUs this build can open, in order; none (with one line saying why) when the build has
    /// GPU support but the machine has no GPU or driver.
    pub fn detect() -> Vec<DeviceSpec> {
        let mut found = Vec::new();
        if cfg!(feature = "cuda") {
            while found.len() < 16 && cuda(found.len()).is_ok() {
                found.push(DeviceSpec::Cuda(found.len()));
            }
            if found.is_empty() {
                tracing::warn!(
                    "built with CUDA, but no CUDA GPU or driver answers: running on the CPU only"
                );
            }
        }
        if cfg!(feature = "metal") && metal(0).is_ok() {
            found.push(DeviceSpec::Metal(0));
        }
        found
    }

    pub fn cuda(i: usize) -> Result<(Device, u64), String> {
        open_cuda(i)
    }

    /// A GPU of the list, opened: the device and the memory it can give.
    pub fn open(spec: &DeviceSpec) -> Result<(Device, u64), String> {
        match spec {
            DeviceSpec::Cuda(i) => cuda(*i),
            DeviceSpec::Metal(i) => metal(*i),
            other => Err(format!("{}: not a GPU", other.name())),
        }
    }

    /// Metal shares the machine's memory: half of it, as the budget to start from.
    pub fn metal(i: usize) -> Result<(Device, u64), String> {
        open_metal(i, crate::units::total_ram().unwrap_or(0) / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists_parse_and_refuse_what_is_not_a_device() {
        let l = parse_list("cpu, cuda:1,sim:0=2GiB").expect("list");
        assert_eq!(
            l,
            vec![
                DeviceSpec::Cpu,
                DeviceSpec::Cuda(1),
                DeviceSpec::Simulated {
                    index: 0,
                    bytes: 2 << 30
                }
            ]
        );
        assert_eq!(l[2].name(), "sim:0");
        for (bad, says) in [
            ("gpu0", "unknown device `gpu0`"),
            ("cuda:x", "not a device index"),
            ("sim:0", "needs its memory"),
            ("sim:0=lots", "not a size"),
            ("cpu,cpu", "listed twice"),
            ("", "no devices given"),
        ] {
            let e = parse_list(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn simulated_gpus_are_offered_with_their_budget_and_the_device_runtime() {
        let list = parse_list("sim:0=3GiB,cpu").expect("list");
        let offered = offer(Some(&list), 5 << 30, 1 << 30, &LoadOptions::default());
        assert_eq!(offered.len(), 2);
        assert_eq!(
            (offered[0].name.as_str(), offered[0].budget),
            ("sim:0", 3 << 30)
        );
        assert!(offered[0].is_gpu && offered[0].load.device_runtime_on_cpu);
        assert_eq!(
            (offered[1].name.as_str(), offered[1].budget),
            ("cpu", 5 << 30)
        );
        assert!(!offered[1].is_gpu && !offered[1].load.device_runtime_on_cpu);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_gpu_this_build_cannot_drive_is_left_out_and_the_node_runs_on_the_rest() {
        let list = parse_list("cuda:0,cpu").expect("list");
        let offered = offer(Some(&list), 1 << 30, 0, &LoadOptions::default());
        let names: Vec<&str> = offered.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["cpu"]);
    }
}
