//! Per-thread accounting of heap allocations.
//!
//! [`Counting`] is a global allocator that forwards to the system allocator and, on a thread
//! that is being metered, adds up the bytes the thread allocates and frees. Mantle meters the
//! evaluation of tenant-supplied expressions with it: the bytes an evaluation holds at once
//! are known at every step of it, whichever part of the interpreter allocated them, so a
//! limit can stop it before it takes the daemon's memory.
//!
//! Outside a metered section the allocator costs one thread-local read per call. Metering
//! is per thread: what another thread allocates is never counted, and memory a metered
//! section frees that was allocated before it began lowers the count only down to zero.
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: mantle_meter::Counting = mantle_meter::Counting;
//!
//! let section = mantle_meter::Section::begin();
//! let v: Vec<u8> = vec![0; 1 << 20];
//! assert!(section.live() >= 1 << 20);
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    // Const-initialized and without destructors: reading them never allocates, and they can
    // be read on a thread that is being torn down.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    static ALLOCATED: Cell<u64> = const { Cell::new(0) };
    static FREED: Cell<u64> = const { Cell::new(0) };
}

fn note(counter: &'static std::thread::LocalKey<Cell<u64>>, bytes: usize) {
    if ACTIVE.try_with(Cell::get).unwrap_or(false) {
        let _ = counter.try_with(|c| c.set(c.get().saturating_add(bytes as u64)));
    }
}

/// The global allocator: the system allocator, counted on metered threads.
pub struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, and only
// reads or writes thread-local counters besides (which never allocate).
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(&ALLOCATED, layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(&ALLOCATED, layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) };
        note(&FREED, layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as received.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(&FREED, layout.size());
            note(&ALLOCATED, new_size);
        }
        p
    }
}

/// A metered section of the current thread: from [`Section::begin`] until it is dropped,
/// the thread's allocations are counted.
pub struct Section {
    // Not `Send`: the counters belong to the thread that began the section.
    _thread_bound: std::marker::PhantomData<*const ()>,
}

impl Section {
    /// Starts counting this thread's allocations from zero.
    ///
    /// # Panics
    ///
    /// If a section is already open on this thread: sections do not nest.
    pub fn begin() -> Section {
        let was = ACTIVE.with(|a| a.replace(true));
        assert!(!was, "mantle_meter sections do not nest");
        ALLOCATED.with(|c| c.set(0));
        FREED.with(|c| c.set(0));
        Section {
            _thread_bound: std::marker::PhantomData,
        }
    }

    /// Bytes allocated since the section began and not freed yet.
    pub fn live(&self) -> u64 {
        self.allocated().saturating_sub(FREED.with(Cell::get))
    }

    /// Bytes allocated since the section began, freed or not.
    pub fn allocated(&self) -> u64 {
        ALLOCATED.with(Cell::get)
    }

    /// Whether the global allocator counts: false in a program that does not install
    /// [`Counting`], where [`Section::live`] stays 0.
    pub fn counts(&self) -> bool {
        let before = self.allocated();
        let probe = std::hint::black_box(Box::new(0u64));
        let counted = self.allocated() > before;
        drop(probe);
        counted
    }
}

impl Drop for Section {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    #[test]
    fn counts_live_and_total_bytes_of_this_thread_only() {
        let section = Section::begin();
        assert!(section.counts());
        let big = std::hint::black_box(vec![1u8; 1 << 20]);
        assert!(section.live() >= 1 << 20, "{}", section.live());
        // Another thread's allocations are not this section's.
        let before = section.allocated();
        std::thread::spawn(|| std::hint::black_box(vec![0u8; 8 << 20]))
            .join()
            .unwrap();
        assert!(section.allocated() - before < 1 << 20);
        drop(big);
        assert!(section.live() < 1 << 16, "{}", section.live());
        assert!(section.allocated() >= 1 << 20);
    }

    #[test]
    fn growth_by_realloc_counts_the_new_size() {
        let section = Section::begin();
        let mut v: Vec<u8> = Vec::with_capacity(16);
        for i in 0..(1u32 << 16) {
            v.push(i as u8);
        }
        assert!(section.live() >= 1 << 16);
        drop(v);
        assert!(section.live() < 1 << 12);
    }

    #[test]
    fn memory_from_before_the_section_does_not_make_it_negative() {
        let old = std::hint::black_box(vec![0u8; 1 << 20]);
        let section = Section::begin();
        drop(old);
        assert_eq!(section.live(), 0);
        drop(section);
        let section = Section::begin();
        assert_eq!(section.allocated(), 0);
    }

    #[test]
    #[should_panic(expected = "do not nest")]
    fn sections_do_not_nest() {
        let _a = Section::begin();
        let _b = Section::begin();
    }
}
