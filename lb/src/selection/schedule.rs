//! Selection strategies, expressed as a precomputed schedule.
//!
//! A strategy turns the endpoint weights into a sequence of endpoint indices
//! once per routing update. The hot path then picks
//! `schedule[cursor.fetch_add(1) % len]`: one atomic add, no lock, and exact
//! fairness across all worker threads. Equal weights give plain round-robin;
//! unequal weights give nginx's smooth weighted round-robin sequence
//! (`a a b a` style interleaving rather than `a a a b`).

/// The largest schedule we build; weights are reduced by their GCD first.
pub const MAX_SCHEDULE: usize = 1 << 16;

/// A selection strategy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Round-robin, weighted when weights differ (smooth WRR).
    #[default]
    RoundRobin,
}

impl Strategy {
    /// The schedule for endpoints with these weights.
    pub fn schedule(self, weights: &[u32]) -> Box<[u32]> {
        match self {
            Strategy::RoundRobin => smooth_wrr(weights),
        }
    }
}

fn gcd(a: u128, b: u128) -> u128 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// nginx's smooth weighted round-robin, unrolled into one full cycle.
fn smooth_wrr(weights: &[u32]) -> Box<[u32]> {
    let weights: Vec<u128> = weights.iter().map(|w| u128::from((*w).max(1))).collect();
    weighted_schedule(&weights)
}

/// The smooth weighted round-robin cycle for these weights (each at least
/// 1): index `i` appears `weights[i] / g` times, `g` their greatest common
/// divisor, so every full cycle is exact. A cycle longer than
/// [`MAX_SCHEDULE`] is scaled down proportionally (every index kept at
/// least once), the one case where the split is only approximate.
pub fn weighted_schedule(weights: &[u128]) -> Box<[u32]> {
    let n = weights.len();
    if n == 0 {
        return Box::new([]);
    }
    let weights: Vec<u128> = weights.iter().map(|w| (*w).max(1)).collect();
    if weights.iter().all(|w| *w == weights[0]) {
        return (0..n as u32).collect();
    }
    let g = weights.iter().copied().fold(0, gcd);
    let mut weights: Vec<u128> = weights.iter().map(|w| w / g).collect();
    let mut total: u128 = weights.iter().sum();
    if total > MAX_SCHEDULE as u128 {
        // Scale down proportionally, keeping every endpoint at least 1.
        let scale = total as f64 / MAX_SCHEDULE as f64;
        for w in &mut weights {
            *w = ((*w as f64 / scale).floor() as u128).max(1);
        }
        total = weights.iter().sum();
    }
    let total = total as i128;
    let mut current = vec![0i128; n];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..n {
            current[i] += weights[i] as i128;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_are_plain_round_robin() {
        assert_eq!(&*Strategy::RoundRobin.schedule(&[1, 1, 1]), &[0, 1, 2]);
        assert_eq!(&*Strategy::RoundRobin.schedule(&[5, 5]), &[0, 1]);
        assert!(Strategy::RoundRobin.schedule(&[]).is_empty());
    }

    #[test]
    fn smooth_wrr_matches_nginx() {
        // nginx's documented example: weights 5,1,1 -> a a b a c a a
        assert_eq!(
            &*Strategy::RoundRobin.schedule(&[5, 1, 1]),
            &[0, 0, 1, 0, 2, 0, 0]
        );
    }

    #[test]
    fn weights_are_exact_per_cycle_and_reduced_by_gcd() {
        let s = Strategy::RoundRobin.schedule(&[4, 2, 6]);
        assert_eq!(s.len(), 6);
        for (i, w) in [2usize, 1, 3].iter().enumerate() {
            assert_eq!(s.iter().filter(|x| **x as usize == i).count(), *w);
        }
    }

    #[test]
    fn huge_weights_are_bounded() {
        let weights: Vec<u32> = (1..=1000).collect();
        let s = Strategy::RoundRobin.schedule(&weights);
        assert!(s.len() <= MAX_SCHEDULE + 1000);
        for i in 0..1000u32 {
            assert!(s.contains(&i), "endpoint {i} missing");
        }
    }
}
