package outbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/gowebpki/jcs"
)

// errUnsupported makes appendCanonical fall back to encoding/json for a
// value type it does not render directly.
var errUnsupported = errors.New("unsupported type")

// canonicalFromGo renders a Go value (the Details of an in-app event) in
// RFC 8785 form directly, for the types JSON decoding and typical callers
// produce (maps, slices, strings, numbers, bools, nil), so recording does
// not pay for json.Marshal plus a re-parse. Other types (structs, …) go
// through json.Marshal and canonicalJSON.
func canonicalFromGo(v any) ([]byte, error) {
	if _, ok := v.(map[string]any); !ok {
		if _, ok := v.(map[string]string); !ok {
			return marshalCanonical(v)
		}
	}
	out, err := appendCanonical(nil, v, 1)
	if errors.Is(err, errUnsupported) {
		return marshalCanonical(v)
	}
	return out, err
}

func marshalCanonical(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("cannot be encoded as JSON: %v", err)
	}
	return canonicalJSON(raw)
}

func appendCanonical(dst []byte, v any, depth int) ([]byte, error) {
	if depth > MaxJSONDepth {
		return nil, fmt.Errorf("is nested deeper than %d levels", MaxJSONDepth)
	}
	switch x := v.(type) {
	case nil:
		return append(dst, "null"...), nil
	case bool:
		return strconv.AppendBool(dst, x), nil
	case string:
		if !utf8.ValidString(x) {
			return nil, errors.New("has a string that is not valid UTF-8")
		}
		return AppendJCSString(dst, x), nil
	case float64:
		return appendNumber(dst, x)
	case float32:
		return appendNumber(dst, float64(x))
	case int:
		return appendNumber(dst, float64(x))
	case int64:
		return appendNumber(dst, float64(x))
	case int32:
		return appendNumber(dst, float64(x))
	case uint64:
		return appendNumber(dst, float64(x))
	case json.Number:
		f, err := strconv.ParseFloat(string(x), 64)
		if err != nil {
			return nil, fmt.Errorf("has number %s outside the IEEE double range", x)
		}
		return appendNumber(dst, f)
	case map[string]any:
		keys := sortedKeys(x)
		dst = append(dst, '{')
		for i, k := range keys {
			if !utf8.ValidString(k) {
				return nil, errors.New("has a key that is not valid UTF-8")
			}
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = AppendJCSString(dst, k)
			dst = append(dst, ':')
			var err error
			if dst, err = appendCanonical(dst, x[k], depth+1); err != nil {
				return nil, err
			}
		}
		return append(dst, '}'), nil
	case map[string]string:
		m := make(map[string]any, len(x))
		for k, s := range x {
			m[k] = s
		}
		return appendCanonical(dst, m, depth)
	case []any:
		dst = append(dst, '[')
		for i, e := range x {
			if i > 0 {
				dst = append(dst, ',')
			}
			var err error
			if dst, err = appendCanonical(dst, e, depth+1); err != nil {
				return nil, err
			}
		}
		return append(dst, ']'), nil
	case []string:
		dst = append(dst, '[')
		for i, s := range x {
			if i > 0 {
				dst = append(dst, ',')
			}
			var err error
			if dst, err = appendCanonical(dst, s, depth+1); err != nil {
				return nil, err
			}
		}
		return append(dst, ']'), nil
	default:
		return nil, errUnsupported
	}
}

func appendNumber(dst []byte, f float64) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, errors.New("has a number that is not finite")
	}
	s, err := jcs.NumberToJSON(f)
	if err != nil {
		return nil, err
	}
	return append(dst, s...), nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareUTF16)
	return keys
}
