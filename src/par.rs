//! Work cut into parts for a few scoped threads: the writer's CPU-only steps (merging a page's
//! items, printing documents as JSON) run side by side instead of on one thread while the JS
//! threads wait for the page to be written.

/// Threads used at most, whatever the machine: the JS pool wants the rest.
const MAX_THREADS: usize = 4;

/// `f` over `items`, in order, on up to [`MAX_THREADS`] threads (never more than the machine
/// has), each taking a contiguous part of at least `min_part` items; on one thread when there
/// are fewer. A panic in `f` is re-raised here, as if `f` had run on this thread.
pub fn map_in_parts<T: Send, R: Send>(items: Vec<T>, min_part: usize, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let parts = cores.min(MAX_THREADS).min(items.len() / min_part.max(1)).max(1);
    if parts == 1 {
        return items.into_iter().map(f).collect();
    }
    let size = items.len().div_ceil(parts);
    let mut chunks: Vec<Vec<T>> = Vec::with_capacity(parts);
    let mut rest = items;
    while rest.len() > size {
        let tail = rest.split_off(size);
        chunks.push(std::mem::replace(&mut rest, tail));
    }
    chunks.push(rest);
    let f = &f;
    std::thread::scope(|scope| {
        let mut chunks = chunks.into_iter();
        // The first part runs on this thread.
        let first = chunks.next().unwrap_or_default();
        let handles: Vec<_> = chunks.map(|chunk| scope.spawn(move || chunk.into_iter().map(f).collect::<Vec<R>>())).collect();
        let mut out: Vec<R> = first.into_iter().map(f).collect();
        for h in handles {
            match h.join() {
                Ok(part) => out.extend(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_order_for_any_size() {
        for n in [0, 1, 5, 99, 100, 101, 1000, 1003] {
            let out = super::map_in_parts((0..n).collect(), 10, |i: usize| i * 2);
            assert_eq!(out, (0..n).map(|i| i * 2).collect::<Vec<_>>(), "n = {n}");
        }
    }
}
