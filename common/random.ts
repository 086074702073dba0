/** Seeded randomness, for models that must repeat themselves and tests that must not flake. */

/** A pseudo-random generator of floats in [0, 1). */
export type Random = () => number;

/** mulberry32: a small, fast, seedable 32-bit generator; the same seed gives the same sequence. */
export function mulberry32(seed: number): Random {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
