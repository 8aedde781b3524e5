package ingest

import (
	"bufio"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

type gotLine struct {
	line int
	data string
}

func collect(t testing.TB, input string, maxLine int) ([]gotLine, error) {
	t.Helper()
	var got []gotLine
	err := readNDJSON(strings.NewReader(input), maxLine, func(line int, data []byte) error {
		got = append(got, gotLine{line, string(data)})
		return nil
	})
	return got, err
}

// reference is the obvious, non-streaming reading of NDJSON.
func reference(input string) []gotLine {
	var out []gotLine
	if input == "" {
		return nil
	}
	lines := strings.Split(input, "\n")
	if strings.HasSuffix(input, "\n") {
		lines = lines[:len(lines)-1]
	}
	for i, l := range lines {
		l = strings.TrimSuffix(l, "\r")
		if strings.TrimSpace(l) == "" {
			continue
		}
		out = append(out, gotLine{i + 1, l})
	}
	return out
}

func TestReadNDJSON(t *testing.T) {
	t.Parallel()
	for name, input := range map[string]string{
		"empty":              "",
		"one line":           `{"a":1}`,
		"newline terminated": "{\"a\":1}\n{\"b\":2}\n",
		"crlf":               "{\"a\":1}\r\n{\"b\":2}\r\n",
		"blank lines":        "\n\n{\"a\":1}\n \t \n\r\n{\"b\":2}",
		"only blanks":        "\n \n\t\n",
		"lone cr in line":    "a\rb\nc",
	} {
		t.Run(name, func(t *testing.T) {
			got, err := collect(t, input, 1024)
			require.NoError(t, err)
			require.Equal(t, reference(input), got)
		})
	}
}

func TestReadNDJSONLineLimit(t *testing.T) {
	t.Parallel()
	_, err := collect(t, strings.Repeat("x", 11)+"\n", 10)
	require.ErrorIs(t, err, bufio.ErrTooLong)
	_, err = collect(t, strings.Repeat("x", 11), 10)
	require.ErrorIs(t, err, bufio.ErrTooLong)
	got, err := collect(t, strings.Repeat("x", 10)+"\r\n"+strings.Repeat("y", 10), 10)
	require.NoError(t, err)
	require.Len(t, got, 2)
}

func TestReadNDJSONStopsOnCallbackError(t *testing.T) {
	t.Parallel()
	stop := errors.New("stop")
	n := 0
	err := readNDJSON(strings.NewReader("a\nb\nc\n"), 10, func(int, []byte) error {
		n++
		if n == 2 {
			return stop
		}
		return nil
	})
	require.ErrorIs(t, err, stop)
	require.Equal(t, 2, n)
}

// FuzzReadNDJSON compares the streaming reader with the obvious reading.
func FuzzReadNDJSON(f *testing.F) {
	for _, s := range []string{"", "\n", "a", "a\nb", "a\r\nb\r\n", "\r", "\r\r\n", " \n\t\n{}", "\xff\n\x00", strings.Repeat("z", 70000) + "\nq"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, input string) {
		got, err := collect(t, input, 1<<20)
		if err != nil {
			t.Fatalf("error: %v", err)
		}
		want := reference(input)
		if len(got) != len(want) {
			t.Fatalf("got %d lines, want %d", len(got), len(want))
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("line %d: got %+v, want %+v", i, got[i], want[i])
			}
			if strings.Contains(got[i].data, "\n") {
				t.Fatalf("line contains a newline: %q", got[i].data)
			}
		}
	})
}

// failingReader returns data, then err instead of io.EOF.
type failingReader struct {
	data string
	err  error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if r.data == "" {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestReadNDJSONReadErrorDropsPartialLine(t *testing.T) {
	t.Parallel()
	boom := errors.New("body too large")
	var got []string
	err := readNDJSON(&failingReader{data: "{\"a\":1}\n{\"b\":", err: boom}, 1024, func(_ int, data []byte) error {
		got = append(got, string(data))
		return nil
	})
	require.ErrorIs(t, err, boom)
	require.Equal(t, []string{`{"a":1}`}, got, "the cut-off line is not delivered")
}
