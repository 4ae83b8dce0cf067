//! Opening GPUs: the engine owns candle's devices, so the node asks here which exist and how
//! much memory each has free. Real with the `cuda` / `metal` features; without them every
//! probe answers that this build has no such support.

pub use candle_core::Device;

/// CUDA GPU `i` and the bytes its driver reports free now.
#[cfg(feature = "cuda")]
pub fn open_cuda(i: usize) -> Result<(Device, u64), String> {
    let device = Device::new_cuda(i).map_err(|e| format!("cuda:{i}: {e}"))?;
    let cuda = device
        .as_cuda_device()
        .map_err(|e| format!("cuda:{i}: {e}"))?;
    let (free, _total) = cuda
        .cuda_stream()
        .context()
        .mem_get_info()
        .map_err(|e| format!("cuda:{i}: reading its free memory: {e}"))?;
    Ok((device, free as u64))
}

/// CUDA GPU `i`: this build has no CUDA.
#[cfg(not(feature = "cuda"))]
pub fn open_cuda(i: usize) -> Result<(Device, u64), String> {
    Err(format!(
        "cuda:{i}: this binary was built without CUDA (cargo build --release --features cuda; see scripts/cuda-env)"
    ))
}

/// Metal GPU `i`, which shares the machine's memory: `host_free` is what may be used.
#[cfg(feature = "metal")]
pub fn open_metal(i: usize, host_free: u64) -> Result<(Device, u64), String> {
    let device = Device::new_metal(i).map_err(|e| format!("metal:{i}: {e}"))?;
    Ok((device, host_free))
}

/// Metal GPU `i`: this build has no Metal.
#[cfg(not(feature = "metal"))]
pub fn open_metal(i: usize, _host_free: u64) -> Result<(Device, u64), String> {
    Err(format!(
        "metal:{i}: this binary was built without Metal (--features metal, on macOS)"
    ))
}

/// Whether this build can drive GPUs at all.
pub const GPU_SUPPORT: bool = cfg!(any(feature = "cuda", feature = "metal"));
