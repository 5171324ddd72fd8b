//! Stripes of an image: the image cut into runs of [`RUN`] bytes, run `i`
//! belonging to stripe `i mod count`. A node fetches the `count` stripes of
//! an image from `count` sources at once (each stripe through its own relay
//! tree), so every node relays one stripe only and all nodes' links carry
//! about one image's worth each; `count` 1 is the whole image, in order.
//!
//! A stripe is sent and received in order, from any byte of it: the bytes
//! of stripe `s` at or after `pos` start at [`Stripe::next_byte`]`(pos)`.

/// Bytes per run.
pub const RUN: u64 = 1 << 20;
/// The most stripes an image is cut into.
pub const MAX_STRIPES: u32 = 64;

/// One stripe of an image: `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stripe {
    index: u32,
    count: u32,
}

impl Stripe {
    /// The whole image as one stripe.
    pub const WHOLE: Stripe = Stripe { index: 0, count: 1 };

    /// Stripe `index` of `count`; a `count` of 0 (a request that names
    /// none) is the whole image.
    pub fn new(index: u32, count: u32) -> Result<Self, String> {
        match count {
            0 if index == 0 => Ok(Self::WHOLE),
            1..=MAX_STRIPES if index < count => Ok(Self { index, count }),
            _ => Err(format!("stripe {index} of {count}: the stripe must be below the count, at most {MAX_STRIPES}")),
        }
    }

    /// Every stripe of a cut into `count` (at least one).
    pub fn all(count: u32) -> impl Iterator<Item = Stripe> {
        let count = count.clamp(1, MAX_STRIPES);
        (0..count).map(move |index| Stripe { index, count })
    }

    /// Which stripe this is.
    pub fn index(self) -> u32 {
        self.index
    }

    /// How many stripes the image is cut into.
    pub fn count(self) -> u32 {
        self.count
    }

    /// The first byte of this stripe at or after `pos`.
    pub fn next_byte(self, pos: u64) -> u64 {
        if self.count == 1 {
            return pos;
        }
        let (run, count, index) = (pos / RUN, u64::from(self.count), u64::from(self.index));
        let here = run % count;
        if here == index {
            pos
        } else if here < index {
            (run - here + index) * RUN
        } else {
            (run - here + count + index) * RUN
        }
    }

    /// The end of the run that holds `pos` (a byte of this stripe): the
    /// stripe's bytes from `pos` go on without a gap up to there.
    pub fn run_end(self, pos: u64) -> u64 {
        if self.count == 1 { u64::MAX } else { (pos / RUN + 1) * RUN }
    }

    /// The next byte of this stripe after the contiguous bytes `[pos, end)`
    /// of it.
    pub fn after(self, end: u64) -> u64 {
        if self.count == 1 || !end.is_multiple_of(RUN) { end } else { self.next_byte(end) }
    }
}

impl std::fmt::Display for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stripe {} of {}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks a stripe from `from` to `size`, returning its byte ranges.
    fn walk(s: Stripe, from: u64, size: u64) -> Vec<(u64, u64)> {
        let mut out = vec![];
        let mut pos = s.next_byte(from);
        while pos < size {
            let end = s.run_end(pos).min(size);
            out.push((pos, end));
            pos = s.after(end);
        }
        out
    }

    #[test]
    fn the_stripes_of_a_cut_cover_every_byte_once_from_any_start() {
        for count in [1, 2, 3, 4, 7] {
            for size in [0, 1, RUN - 1, RUN, 5 * RUN + 17, 12 * RUN] {
                for from in [0, 1, RUN / 2, RUN, 3 * RUN + 5, size] {
                    let mut ranges: Vec<(u64, u64)> =
                        Stripe::all(count).flat_map(|s| walk(s, from.min(size), size)).collect();
                    ranges.sort();
                    let mut at = from.min(size);
                    for (a, b) in &ranges {
                        assert_eq!(*a, at, "count {count} size {size} from {from}: {ranges:?}");
                        assert!(b > a);
                        at = *b;
                    }
                    assert_eq!(at, size, "count {count} size {size} from {from}");
                }
            }
        }
    }

    #[test]
    fn a_stripe_holds_every_count_th_run() {
        let s = Stripe::new(2, 4).unwrap();
        assert_eq!(walk(s, 0, 11 * RUN), vec![(2 * RUN, 3 * RUN), (6 * RUN, 7 * RUN), (10 * RUN, 11 * RUN)]);
        assert_eq!(s.next_byte(2 * RUN + 9), 2 * RUN + 9, "a resume inside its run");
        assert_eq!(s.next_byte(3 * RUN), 6 * RUN);
        assert_eq!(Stripe::new(0, 0).unwrap(), Stripe::WHOLE, "a request naming no stripe");
        assert!(Stripe::new(4, 4).is_err());
        assert!(Stripe::new(0, MAX_STRIPES + 1).is_err());
    }
}
