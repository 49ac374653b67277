//! How freed memory is kept: tuned once per process, before the engine starts.
//!
//! A batch crosses into SpiderMonkey as a multi-megabyte UTF-16 string, the engine's JSON
//! parser and `JSON.stringify` grow buffers of that order, and the outcomes come back into
//! Rust as large strings. With both allocators' defaults, much of that memory went back to the
//! kernel after each batch and was faulted in, zero-filled, by the next: on the mail benchmark
//! the process spent over a third of its CPU time in the kernel (`clear_page_erms`). Keeping
//! freed memory for reuse cut the kernel's share roughly in half (~12% more messages/s); the
//! price is a resident size a few percent higher during a run.
//!
//! - glibc `malloc` (SpiderMonkey's and SQLite's): no `mmap` per buffer below 32 MiB, and an
//!   arena's free top is returned only beyond 64 MiB, growing by 16 MiB at a time.
//! - mimalloc (Rust's global allocator in Raindrop's binaries): freed pages are kept 2 s
//!   before they are returned.

/// Freed pages go back to the kernel after this long unused: not while a run reuses them
/// (mimalloc's 1 s default cost ~3% on the mail benchmark; 2 s measured the same as never),
/// but a daemon that goes idle still shrinks.
const PURGE_DELAY_MS: std::os::raw::c_long = 2000;

/// `mi_option_purge_delay`: the bindings leave it unnamed; it is the 16th entry of
/// `mi_option_e` in both of libmimalloc-sys 0.1.49's mimalloc versions (v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

pub(super) fn keep_freed_memory() {
    // SAFETY: `mallopt` only changes glibc's tuning parameters; any value is valid for these
    // three, and it is safe to call while other threads allocate (glibc takes its lock).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
    }
    // SAFETY: sets one option in mimalloc's table of plain integers.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

#[cfg(test)]
mod tests {
    /// What the settings are for, observed in glibc itself: a buffer of tens of MiB comes from
    /// the heap (the default maps anything over 128 KiB, and unmaps it on free), and freeing it
    /// does not hand it back to the kernel.
    #[test]
    fn a_big_buffer_comes_from_the_heap_and_stays_after_free() {
        super::keep_freed_memory();
        let size: usize = 24 << 20;
        // SAFETY: plain allocator calls; the buffer is written only within its size and freed
        // once; mallinfo2 only reads the allocator's counters.
        unsafe {
            let before = libc::mallinfo2();
            // black_box: without it the optimiser may drop the malloc, the writes and the free.
            let p = std::hint::black_box(libc::malloc(size));
            assert!(!p.is_null());
            std::ptr::write_bytes(p.cast::<u8>(), 1, size);
            std::hint::black_box(p);
            let during = libc::mallinfo2();
            libc::free(p);
            let after = libc::mallinfo2();
            assert!(
                during.hblkhd < before.hblkhd + size,
                "the buffer was a mapping of its own ({} -> {} mapped bytes)",
                before.hblkhd,
                during.hblkhd
            );
            assert!(
                after.arena + size / 2 > during.arena,
                "the freed buffer went back to the kernel ({} -> {} heap bytes)",
                during.arena,
                after.arena
            );
        }
        // SAFETY: reads one option; no memory is touched.
        let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(delay, super::PURGE_DELAY_MS);
    }
}
