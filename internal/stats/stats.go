// Package stats holds the summary statistics the benchmarks and the
// benchmark-like e2e tests report, so that each reports the same thing
// under the same name.
package stats

import "slices"

// Median returns the median of v: the middle value, or the mean of the
// middle two for an even count; 0 for none. v is left as it is.
func Median[T ~int64 | ~float64](v []T) T {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
