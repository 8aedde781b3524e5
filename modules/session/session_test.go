package session

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRoles(t *testing.T) {
	t.Parallel()
	require.True(t, RoleOwner.AtLeast(RoleAdmin))
	require.True(t, RoleAgent.AtLeast(RoleAgent))
	require.False(t, RoleViewer.AtLeast(RoleAgent))
	require.False(t, Role("root").AtLeast(RoleViewer))
	require.False(t, Role("").Valid())
}

func TestTokens(t *testing.T) {
	t.Parallel()
	a, ha, err := NewToken()
	require.NoError(t, err)
	b, hb, err := NewToken()
	require.NoError(t, err)
	require.NotEqual(t, a, b)
	require.NotEqual(t, ha, hb)
	require.True(t, strings.HasPrefix(a, TokenPrefix))
	require.Equal(t, ha, HashToken(a))
	require.Len(t, ha, 32)

	for h, want := range map[string]string{
		"Bearer " + a:                            a,
		"bearer   " + a + " ":                    a,
		a:                                        "",
		"Basic " + a:                             "",
		"Bearer key_123":                         "",
		"Bearer mem_" + strings.Repeat("x", 200): "",
		"":                                       "",
	} {
		got, ok := bearer(h)
		require.Equal(t, want, got, h)
		require.Equal(t, want != "", ok, h)
	}
}
