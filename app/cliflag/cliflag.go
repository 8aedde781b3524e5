// Package cliflag parses the flags of an auditlog command.
//
// The flag package prints a parse error and the command's usage itself,
// and the CLI then reported the same mistake again with its own usage (exit
// code 2). Parse keeps the flag package quiet about mistakes, so that the
// caller reports each once, and prints the command's usage only when asked
// for it with -h.
package cliflag

import (
	"errors"
	"flag"
	"fmt"
	"io"
)

// Parse parses args with fs. A mistake is returned, not printed; -h prints
// fs's usage (fs.Usage, or the flags' defaults) to fs.Output() and returns
// flag.ErrHelp.
func Parse(fs *flag.FlagSet, args []string) error {
	out, usage := fs.Output(), fs.Usage
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	fs.SetOutput(out)
	fs.Usage = usage
	if errors.Is(err, flag.ErrHelp) {
		if usage != nil {
			usage()
		} else {
			fmt.Fprintf(out, "Usage of %s:\n", fs.Name())
			fs.PrintDefaults()
		}
	}
	return err
}
