// Package mutate owns the whole injection decision: from a Pod and a Config
// to the mutated Pod and a Report of what was injected and what was skipped.
// It is pure: no I/O, no globals, no flags, no clock. The webhook
// (package admission) and the offline inject command both call Pod, so the
// opt-in label and the annotation rules are the same everywhere.
//
// What Pod guarantees, and mutate's golden and fuzz tests check for every
// case (package patch relies on the first three):
//   - additive: every list and map of the input is a subsequence of the
//     output's (matched by name), nothing the user wrote is changed;
//   - copy-on-write: the input is never modified;
//   - idempotent: on its own output, even after the API server filled in
//     defaults, Pod changes nothing;
//   - the user wins: an env var, volume, mount or container podmeta would
//     add but the user already has is skipped and reported, never replaced.
package mutate
