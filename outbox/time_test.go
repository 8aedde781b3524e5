package outbox

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// AppendTime, and FormatTime through it, write what the layout would, for
// every year, zone and fraction.
func TestAppendTimeMatchesAppendFormat(t *testing.T) {
	times := []time.Time{
		{}, time.Unix(0, 0), time.Unix(1, 5e6), time.Unix(-1, 999999999),
		time.Date(2026, 11, 25, 20, 30, 25, 123456789, time.UTC),
		time.Date(2026, 12, 31, 23, 59, 59, 999999999, time.FixedZone("x", -5*3600)),
		time.Date(999, 1, 2, 3, 4, 5, 6e6, time.UTC), time.Date(9999, 12, 31, 23, 59, 59, 999e6, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	for i := range 1000 {
		times = append(times, time.Unix(int64(i)*7919*86400+int64(i)*3607, int64(i)*999983%1e9).In(time.Local))
	}
	for _, at := range times {
		require.Equal(t, at.UTC().Format("2006-01-02T15:04:05.000Z"), string(AppendTime(nil, at)), at)
		require.Equal(t, at.UTC().Format(TimeFormat), FormatTime(at), at)
	}
}
