package cliflag

import (
	"bytes"
	"flag"
	"testing"

	"github.com/stretchr/testify/require"
)

func newSet(out *bytes.Buffer) *flag.FlagSet {
	fs := flag.NewFlagSet("keys create", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.String("workspace", "", "workspace the key belongs to")
	return fs
}

// A mistake is returned and nothing printed: the caller reports it, once.
func TestParseMistakeIsNotPrinted(t *testing.T) {
	var out bytes.Buffer
	err := Parse(newSet(&out), []string{"--bogus"})
	require.ErrorContains(t, err, "flag provided but not defined: -bogus")
	require.Empty(t, out.String())
}

// -h prints the command's flags, through its own Usage when it has one.
func TestParseHelpPrintsUsage(t *testing.T) {
	var out bytes.Buffer
	require.ErrorIs(t, Parse(newSet(&out), []string{"-h"}), flag.ErrHelp)
	require.Contains(t, out.String(), "Usage of keys create:")
	require.Contains(t, out.String(), "-workspace")

	out.Reset()
	fs := newSet(&out)
	fs.Usage = func() { out.WriteString("custom usage\n") }
	require.ErrorIs(t, Parse(fs, []string{"-h"}), flag.ErrHelp)
	require.Equal(t, "custom usage\n", out.String())
}

// Flags parse as with fs.Parse.
func TestParseParses(t *testing.T) {
	var out bytes.Buffer
	fs := newSet(&out)
	require.NoError(t, Parse(fs, []string{"--workspace", "ws_a", "rest"}))
	require.Equal(t, "ws_a", fs.Lookup("workspace").Value.String())
	require.Equal(t, []string{"rest"}, fs.Args())
}
