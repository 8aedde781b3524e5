package ingest

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// readNDJSON calls fn for every non-blank line of r with its 1-based line
// number. Lines end in "\n" or "\r\n"; the last line needs no terminator;
// lines holding only whitespace are skipped. A line longer than maxLine
// bytes is bufio.ErrTooLong. fn's error stops the reading and is returned;
// so is a read error (such as *http.MaxBytesError), and the partial line
// before it is never passed to fn: a body cut off by a limit must not look
// like a shorter, valid one.
//
// data is only valid during the call.
func readNDJSON(r io.Reader, maxLine int, fn func(line int, data []byte) error) error {
	br := bufio.NewReaderSize(r, 64*1024)
	var buf []byte
	line := 0
	for {
		chunk, err := br.ReadSlice('\n')
		// Room for the line plus its "\r\n" terminator.
		if len(buf)+len(chunk) > maxLine+2 {
			return bufio.ErrTooLong
		}
		buf = append(buf, chunk...)
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if len(buf) == 0 {
			return nil // clean end after a terminated line, or empty input
		}
		line++
		data := bytes.TrimSuffix(buf, []byte("\n"))
		data = bytes.TrimSuffix(data, []byte("\r"))
		if len(data) > maxLine {
			return bufio.ErrTooLong
		}
		if len(bytes.TrimSpace(data)) > 0 {
			if ferr := fn(line, data); ferr != nil {
				return ferr
			}
		}
		if err != nil {
			return nil // io.EOF after an unterminated last line
		}
		buf = buf[:0]
	}
}
