//! Weight storage that several threads fill in place: a fixed-capacity vector of plain-old-data
//! blocks, allocated zeroed (so untouched pages cost nothing until a converter writes them) and
//! filled tail-first by [`spare_mut`](Pages::spare_mut) + [`set_filled`](Pages::set_filled).
//!
//! Why not huge pages: advising this memory for transparent huge pages (`MADV_HUGEPAGE`) was
//! measured on the 1.5B benchmark model: no decode gain within the VM's noise, and a load 2×
//! slower, because every fresh 2 MiB page is first touched on the host too.

use bytemuck::Zeroable;

/// A fixed-capacity vector of `T`, filled from the front.
pub(crate) struct Pages<T: Zeroable> {
    items: Vec<T>,
    len: usize,
}

impl<T: Zeroable> std::fmt::Debug for Pages<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pages")
            .field("len", &self.len)
            .field("capacity", &self.items.len())
            .finish()
    }
}

impl<T: Zeroable + Clone> Pages<T> {
    /// Room for `capacity` items; none filled yet.
    pub fn with_capacity(capacity: usize) -> Pages<T> {
        Pages {
            items: bytemuck::allocation::zeroed_vec(capacity),
            len: 0,
        }
    }
}

impl<T: Zeroable> Pages<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Appends items while there is room; returns how many were taken.
    pub fn extend(&mut self, items: impl IntoIterator<Item = T>) -> usize {
        let mut n = 0;
        for (slot, item) in self.items[self.len..].iter_mut().zip(items) {
            *slot = item;
            n += 1;
        }
        self.len += n;
        n
    }

    /// The unfilled tail, to be written in place (e.g. by several threads); commit with
    /// [`set_filled`](Self::set_filled).
    pub fn spare_mut(&mut self) -> &mut [T] {
        &mut self.items[self.len..]
    }

    /// Marks `n` more items of the tail as filled (at most the room left).
    pub fn set_filled(&mut self, n: usize) {
        self.len = (self.len + n).min(self.items.len());
    }
}

impl<T: Zeroable> std::ops::Deref for Pages<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.items[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::Pages;

    #[test]
    fn fills_up_to_its_capacity_and_reads_back_in_order() {
        let mut p = Pages::<[u32; 3]>::with_capacity(1 << 20);
        assert_eq!(p.len(), 0);
        assert!(p.is_empty());
        let n = p.extend((0..600_000u32).map(|i| [i, i + 1, i ^ 7]));
        assert_eq!((n, p.len()), (600_000, 600_000));
        let m = p.extend((0..1_000_000u32).map(|i| [i, 0, 0]));
        assert_eq!(m, (1 << 20) - 600_000);
        assert_eq!(p.len(), 1 << 20);
        assert_eq!(p[599_999], [599_999, 600_000, 599_999 ^ 7]);
        assert_eq!(p[600_000], [0, 0, 0]);
        assert!(p.spare_mut().is_empty());
        let empty = Pages::<u64>::with_capacity(0);
        assert!(empty.is_empty());
    }

    #[test]
    fn a_tail_filled_in_place_counts_once_committed() {
        let mut p = Pages::<u16>::with_capacity(10);
        p.extend([1, 2]);
        p.spare_mut()[..3].copy_from_slice(&[3, 4, 5]);
        assert_eq!(&p[..], &[1, 2]);
        p.set_filled(3);
        assert_eq!(&p[..], &[1, 2, 3, 4, 5]);
        p.set_filled(100);
        assert_eq!(p.len(), 10);
    }
}
