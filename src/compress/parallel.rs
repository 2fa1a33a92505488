//! Compress independent blocks on every core and hand them back in input order.

use std::io;

/// Runs `compress(index, block)` for every block, spread over `threads` workers, and returns
/// the outputs in block order.
pub fn map_blocks<F>(blocks: &[&[u8]], threads: usize, compress: F) -> io::Result<Vec<Vec<u8>>>
where
    F: Fn(usize, &[u8]) -> io::Result<Vec<u8>> + Sync,
{
    if blocks.len() <= 1 || threads <= 1 {
        return blocks.iter().enumerate().map(|(i, b)| compress(i, b)).collect();
    }
    let workers = threads.min(blocks.len());
    let mut out: Vec<Option<io::Result<Vec<u8>>>> = (0..blocks.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let compress = &compress;
                scope.spawn(move || {
                    (w..blocks.len()).step_by(workers).map(|i| (i, compress(i, blocks[i]))).collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            for (i, result) in handle.join().expect("compression worker panicked") {
                out[i] = Some(result);
            }
        }
    });
    out.into_iter().map(|r| r.expect("every block was compressed")).collect()
}
