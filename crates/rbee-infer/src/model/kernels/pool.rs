//! Splitting a matmul's output columns over candle's persistent thread pool.
//!
//! The pool's workers spin between jobs, so handing out work costs
//! microseconds, which matters when a decode step runs ~150 small matmuls.
//! Each work item owns a disjoint block of the output, handed out through an
//! uncontended mutex so that no `unsafe` is needed.

use std::sync::{Mutex, OnceLock};

/// Threads in candle's pool (its workers plus the caller), computed once:
/// candle's own `get_num_threads` re-reads `/proc/cpuinfo` on every call,
/// which costs more than a small matmul. Mirrors how candle sizes the pool
/// (`CANDLE_NUM_THREADS`, else its default).
pub(crate) fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        std::env::var("CANDLE_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(candle_core::utils::get_num_threads)
            .max(1)
    })
}

/// Computes an `m × n` row-major result by column blocks: `kernel(cols, out)`
/// must fill `out`, laid out `[row][col - cols.start]`, for the columns `cols`
/// of every row. Blocks run in parallel; results are identical to a serial
/// run because every output element is computed by exactly one call.
///
/// Each block is computed into its own buffer and copied into its columns of the result by
/// the thread that computed it, while the others compute: no whole-size staging copy (a
/// 512-token prompt's fused gate/up projection is 37 MB, freshly mapped and faulted in for
/// every matmul) and no serial re-layout after the blocks. One-row results (decode) are
/// written in place.
pub(crate) fn par_columns<F>(m: usize, n: usize, min_cols: usize, kernel: F) -> Vec<f32>
where
    F: Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
{
    let threads = threads();
    // Enough blocks for the pool to balance, each big enough to amortise a grab.
    let per_block = n.div_ceil(threads * 8).max(min_cols).min(n.max(1));
    let blocks = n.div_ceil(per_block);
    let mut out = vec![0f32; m * n];
    if threads == 1 || blocks <= 1 {
        kernel(0..n, &mut out);
        return out;
    }
    {
        // Block b's columns of every row: `m` slices of `out`.
        let mut parts: Vec<Vec<&mut [f32]>> = (0..blocks).map(|_| Vec::with_capacity(m)).collect();
        for row in out.chunks_exact_mut(n) {
            let mut rest = row;
            for part in &mut parts {
                let (cols, tail) = rest.split_at_mut(per_block.min(rest.len()));
                part.push(cols);
                rest = tail;
            }
        }
        let parts: Vec<Mutex<Vec<&mut [f32]>>> = parts.into_iter().map(Mutex::new).collect();
        candle_core::utils::barrier_pool().execute_chunked(blocks, |range| {
            let mut scratch = Vec::new();
            for b in range {
                let mut guard = parts[b].lock().unwrap_or_else(|e| e.into_inner());
                let cols = b * per_block..((b + 1) * per_block).min(n);
                match guard.as_mut_slice() {
                    [one] => kernel(cols, one),
                    rows => {
                        scratch.clear();
                        scratch.resize(m * cols.len(), 0f32);
                        kernel(cols.clone(), &mut scratch);
                        for (row, from) in rows.iter_mut().zip(scratch.chunks_exact(cols.len())) {
                            row.copy_from_slice(from);
                        }
                    }
                }
            }
        });
    }
    out
}

/// Interleaved activation bytes a tile kernel streams for every weight row at most: blocks
/// of row groups this big stay in the core's L2 (2 MiB here) beside the weight rows, where
/// all of a long prompt's groups would not (a 330-token prompt against a 8960-wide FFN is
/// 3 MB), and re-reading the weight rows once per block costs little. (Only the AVX2 builds
/// have tile kernels.)
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) const GROUP_BLOCK_BYTES: usize = 192 << 10;

/// `groups` row groups of `bytes_per_group` each, in consecutive ranges of at most
/// [`GROUP_BLOCK_BYTES`] (at least one group each).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) fn group_blocks(
    groups: usize,
    bytes_per_group: usize,
) -> impl Iterator<Item = std::ops::Range<usize>> {
    let per = (GROUP_BLOCK_BYTES / bytes_per_group.max(1)).max(1);
    (0..groups)
        .step_by(per)
        .map(move |g| g..(g + per).min(groups))
}

/// Weight blocks a load converts on one thread; more are spread over the pool.
pub(crate) const PARALLEL_UNPACK: usize = 4096;

/// Runs `job(index, out)` for every `job_len`-sized chunk of `out`, spread
/// over the pool in groups of about `group` jobs when `parallel` is set.
pub(crate) fn par_jobs<T, F>(out: &mut [T], job_len: usize, parallel: bool, job: F)
where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync,
{
    let jobs = out.len() / job_len.max(1);
    let threads = threads();
    if !parallel || threads == 1 || jobs < 2 {
        for (i, chunk) in out.chunks_exact_mut(job_len).enumerate() {
            job(i, chunk);
        }
        return;
    }
    let per_group = jobs.div_ceil(threads * 4).max(1);
    let groups: Vec<Mutex<(usize, &mut [T])>> = out
        .chunks_mut(per_group * job_len)
        .enumerate()
        .map(|(g, chunk)| Mutex::new((g * per_group, chunk)))
        .collect();
    candle_core::utils::barrier_pool().execute_chunked(groups.len(), |range| {
        for g in range {
            let mut guard = groups[g].lock().unwrap_or_else(|e| e.into_inner());
            let (first, chunk) = &mut *guard;
            for (i, out) in chunk.chunks_exact_mut(job_len).enumerate() {
                job(*first + i, out);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every block lands in its columns of every row: one row (written in place), several
    /// (through each block's buffer), and a width that leaves a short last block.
    #[test]
    fn blocks_reassemble_row_major() {
        for (m, n) in [(3, 1000), (1, 1000), (5, 37), (1, 1)] {
            let out = par_columns(m, n, 7, |cols, out| {
                let w = cols.len();
                assert_eq!(out.len(), m * w);
                for r in 0..m {
                    for (i, c) in cols.clone().enumerate() {
                        out[r * w + i] = (r * 10_000 + c) as f32;
                    }
                }
            });
            assert_eq!(out.len(), m * n);
            for r in 0..m {
                for c in 0..n {
                    assert_eq!(out[r * n + c], (r * 10_000 + c) as f32, "{m}x{n}");
                }
            }
        }
    }
}
