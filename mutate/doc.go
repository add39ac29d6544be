// Package mutate owns the whole injection decision: from a Pod and a Config
// to the mutated Pod and a Report of what was injected and what was skipped.
// It is pure: no I/O, no globals, no flags, no clock.
package mutate
