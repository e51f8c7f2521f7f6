package bench

import (
	"math"
	"sort"
	"time"
)

// percentile returns the nearest-rank p-th percentile (0 < p ≤ 1) of samples, in ms.
func percentile(samples []time.Duration, p float64) float64 {
	if len(samples) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), samples...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(math.Ceil(p*float64(len(s)))) - 1
	i = max(0, min(i, len(s)-1))
	return ms(s[i])
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// round keeps n decimals: enough for the figures, short in JSON.
func round(x float64, n int) float64 {
	p := math.Pow(10, float64(n))
	return math.Round(x*p) / p
}

// roundPositive rounds, but never turns a positive figure into 0.
func roundPositive(x float64, n int) float64 {
	r := round(x, n)
	if r == 0 && x > 0 {
		return math.Pow(10, -float64(n))
	}
	return r
}
