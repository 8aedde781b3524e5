package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Load returns the defaults overlaid with the YAML file at path, then with
// AUDITLOG_<SECTION>_<KEY> variables from environ (os.Environ's form,
// "NAME=value"), then validated.
//
// An empty path reads DefaultFile from the working directory when it exists
// and no file otherwise; an explicit path that does not exist is an error.
// A key the file does not know, or an AUDITLOG_<SECTION>_ variable of a
// known section that names no key of it, is an error naming it, so a
// misspelt key never silently leaves a default in place. AUDITLOG_
// variables of no known section (a client's AUDITLOG_URL, Kubernetes'
// AUDITLOG_SERVICE_HOST) and Kubernetes service links are not settings:
// they are ignored, and IgnoredEnv lists them so that the caller can say
// so.
func Load(path string, environ []string) (Config, error) {
	cfg := Default()

	file := path
	if file == "" {
		if _, err := os.Stat(DefaultFile); err == nil {
			file = DefaultFile
		} else if !errors.Is(err, fs.ErrNotExist) {
			return Config{}, fmt.Errorf("checking for %s: %w", DefaultFile, err)
		}
	}
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return Config{}, fmt.Errorf("reading config file: %w", err)
		}
		if err := decodeYAML(&cfg, data); err != nil {
			return Config{}, fmt.Errorf("config file %s: %w", file, err)
		}
	}

	if err := applyEnv(&cfg, environ); err != nil {
		return Config{}, err
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, fmt.Errorf("invalid configuration: %w", err)
	}
	return cfg, nil
}

// setting is one leaf of Config: its YAML dotted key, its environment
// variable and the field it sets.
type setting struct {
	key   string // "relay.batch_size"
	env   string // "AUDITLOG_RELAY_BATCH_SIZE"
	field reflect.Value
}

// settings lists every leaf of cfg from the yaml struct tags, so the YAML
// keys and the environment variables can never drift apart.
func settings(cfg *Config) []setting {
	var out []setting
	root := reflect.ValueOf(cfg).Elem()
	for i := range root.NumField() {
		section := yamlName(root.Type().Field(i))
		sv := root.Field(i)
		for j := range sv.NumField() {
			key := yamlName(sv.Type().Field(j))
			out = append(out, setting{
				key:   section + "." + key,
				env:   EnvPrefix + strings.ToUpper(section) + "_" + strings.ToUpper(key),
				field: sv.Field(j),
			})
		}
	}
	return out
}

func yamlName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	return name
}

// Keys returns every setting's YAML dotted key, in Config's field order.
func Keys() []string {
	var cfg Config
	var keys []string
	for _, s := range settings(&cfg) {
		keys = append(keys, s.key)
	}
	return keys
}

// EnvName returns the environment variable that overrides the YAML dotted
// key, e.g. "relay.poll_interval" → "AUDITLOG_RELAY_POLL_INTERVAL".
func EnvName(key string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// decodeYAML overlays the document onto cfg. It walks the document against
// Config's two levels itself rather than using yaml.Decoder.KnownFields:
// that way an unknown key or a wrongly typed value is reported with its
// dotted key ("http.adr") and line instead of a Go type name.
func decodeYAML(cfg *Config, data []byte) error {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file sets nothing
		}
		return fmt.Errorf("parsing YAML: %w", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return errors.New("more than one YAML document")
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return errors.New("not a YAML document")
	}
	top := doc.Content[0]
	if isNull(top) {
		return nil // a file of only comments
	}
	if top.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: top level must be a mapping of sections", top.Line)
	}

	byKey := map[string]setting{}
	sections := map[string]bool{}
	for _, s := range settings(cfg) {
		byKey[s.key] = s
		section, _, _ := strings.Cut(s.key, ".")
		sections[section] = true
	}

	// yaml.v3 reports repeated keys only when decoding into a struct or
	// map, not into a Node, so this walk checks them itself.
	seen := map[string]bool{}
	for i := 0; i+1 < len(top.Content); i += 2 {
		sk, sv := top.Content[i], top.Content[i+1]
		if !sections[sk.Value] {
			return fmt.Errorf("line %d: unknown key %q", sk.Line, sk.Value)
		}
		if seen[sk.Value] {
			return fmt.Errorf("line %d: key %q given twice", sk.Line, sk.Value)
		}
		seen[sk.Value] = true
		if isNull(sv) {
			continue // "http:" with nothing under it
		}
		if sv.Kind != yaml.MappingNode {
			return fmt.Errorf("line %d: %s: must be a mapping", sv.Line, sk.Value)
		}
		for j := 0; j+1 < len(sv.Content); j += 2 {
			kk, kv := sv.Content[j], sv.Content[j+1]
			key := sk.Value + "." + kk.Value
			s, ok := byKey[key]
			if !ok {
				return fmt.Errorf("line %d: unknown key %q", kk.Line, key)
			}
			if seen[key] {
				return fmt.Errorf("line %d: key %q given twice", kk.Line, key)
			}
			seen[key] = true
			if err := decodeLeaf(s.field, kv); err != nil {
				return fmt.Errorf("line %d: %s: %w", kv.Line, key, err)
			}
		}
	}
	return nil
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// decodeLeaf sets one field from its YAML value; an explicit null sets the
// zero value (so "trusted_proxies:" means none, "url:" means empty).
func decodeLeaf(field reflect.Value, n *yaml.Node) error {
	if isNull(n) {
		field.Set(reflect.Zero(field.Type()))
		return nil
	}
	// Decode into a fresh value so a failed decode leaves the field alone.
	v := reflect.New(field.Type())
	if err := n.Decode(v.Interface()); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			msgs := make([]string, len(te.Errors))
			for i, m := range te.Errors {
				// yaml prefixes "line N: ", which the caller already says.
				_, rest, found := strings.Cut(m, ": ")
				if !found {
					rest = m
				}
				msgs[i] = rest
			}
			return errors.New(strings.Join(msgs, "; "))
		}
		return err
	}
	field.Set(v.Elem())
	return nil
}

var durationType = reflect.TypeFor[time.Duration]()

// applyEnv overlays the AUDITLOG_<SECTION>_<KEY> variables of environ.
func applyEnv(cfg *Config, environ []string) error {
	_, err := walkEnv(cfg, environ, func(s setting, value string) error {
		if err := setFromString(s.field, value); err != nil {
			return fmt.Errorf("environment variable %s (%s): %w", s.env, s.key, err)
		}
		return nil
	})
	return err
}

// IgnoredEnv returns the names of the AUDITLOG_ variables of environ that
// Load ignores: those of no config section (nor one misspelt), and
// Kubernetes service links. Callers log them once Load has accepted
// environ.
func IgnoredEnv(environ []string) []string {
	ignored, _ := walkEnv(new(Config), environ, func(setting, string) error { return nil })
	return ignored
}

// walkEnv goes through the AUDITLOG_ variables of environ (not the
// reserved AUDITLOG_TEST_*): set is called for each that names a setting of
// cfg, and those not meant for auditlog (foreignEnv) are returned. A
// misspelt one, or an error of set, stops the walk.
func walkEnv(cfg *Config, environ []string, set func(s setting, value string) error) (ignored []string, err error) {
	byEnv := map[string]setting{}
	for _, s := range settings(cfg) {
		byEnv[s.env] = s
	}
	for _, kv := range environ {
		name, value, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, EnvPrefix) || strings.HasPrefix(name, EnvTestPrefix) {
			continue
		}
		if s, ok := byEnv[name]; ok {
			if err := set(s, value); err != nil {
				return nil, err
			}
			continue
		}
		if err := foreignEnv(name, value); err != nil {
			return nil, err
		}
		ignored = append(ignored, name)
	}
	return ignored, nil
}

// foreignEnv decides about an AUDITLOG_ variable that names no setting: nil
// when it is not meant for auditlog (ignored), an error when it looks like
// a misspelt setting. A Kubernetes service link, told by its name and the
// shape of its value, is foreign; so is a variable of no section, unless
// its section is one letter or two from a real one (AUDITLOG_DATABSE_URL
// would otherwise leave database.url empty and start the embedded
// database). A variable of a known section is a misspelt key.
func foreignEnv(name, value string) error {
	if isServiceLink(name, value) {
		return nil
	}
	if inKnownSection(name) {
		return fmt.Errorf("environment variable %s: unknown setting (expected %s<SECTION>_<KEY> for a key of config.yaml)", name, EnvPrefix)
	}
	first, _, _ := strings.Cut(strings.TrimPrefix(name, EnvPrefix), "_")
	if section, ok := nearSection(strings.ToLower(first)); ok {
		return fmt.Errorf("environment variable %s: unknown setting; is %s misspelt for the section %q (%s%s_<KEY>)?",
			name, first, section, EnvPrefix, strings.ToUpper(section))
	}
	return nil
}

// inKnownSection reports whether the variable name starts with
// AUDITLOG_<SECTION>_ for a section of Config.
func inKnownSection(name string) bool {
	for _, section := range sections() {
		if strings.HasPrefix(name, EnvPrefix+strings.ToUpper(section)+"_") {
			return true
		}
	}
	return false
}

// sections returns Config's top-level YAML keys.
func sections() []string {
	t := reflect.TypeFor[Config]()
	out := make([]string, t.NumField())
	for i := range out {
		out[i] = yamlName(t.Field(i))
	}
	return out
}

// nearSection returns the section word is a likely misspelling of: at edit
// distance 1, or 2 for words of six letters or more (so that PORT, a
// Kubernetes word, is not taken for export).
func nearSection(word string) (string, bool) {
	allowed := 1
	if len(word) >= 6 {
		allowed = 2
	}
	for _, section := range sections() {
		if d := editDistance(word, section); d > 0 && d <= allowed {
			return section, true
		}
	}
	return "", false
}

// editDistance is the Levenshtein distance between a and b (bytes).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// serviceLink matches the names of the variables Kubernetes puts into
// every pod for each Service in its namespace, capturing the kind of
// value each holds: FOO_SERVICE_HOST (an address), FOO_SERVICE_PORT and
// FOO_SERVICE_PORT_NAME (a number), FOO_PORT and FOO_PORT_8080_TCP
// (tcp://address:port), FOO_PORT_8080_TCP_PROTO (tcp), _PORT (a number),
// _ADDR (an address). A Service named auditlog-http gives
// AUDITLOG_HTTP_PORT=tcp://…, which must not stop the binary.
var serviceLink = regexp.MustCompile(`_(?:(SERVICE_HOST)|(SERVICE_PORT)(?:_[A-Z0-9_]+)?|PORT|PORT_[0-9]+_(?:TCP|UDP|SCTP)(?:_(PROTO|PORT|ADDR))?)$`)

// linkURL is the value of FOO_PORT and FOO_PORT_8080_TCP.
var linkURL = regexp.MustCompile(`^(tcp|udp|sctp)://[^/]+:[0-9]+$`)

// isServiceLink reports whether name and value look like a Kubernetes
// service link: the name's form and a value of the matching shape, so a
// misspelt key that happens to end in _PORT (AUDITLOG_DATABASE_EMBEDED_PORT=5)
// is not taken for one.
func isServiceLink(name, value string) bool {
	m := serviceLink.FindStringSubmatch(name)
	if m == nil {
		return false
	}
	isAddr := func(v string) bool { _, err := netip.ParseAddr(v); return err == nil }
	isNumber := func(v string) bool { _, err := strconv.ParseUint(v, 10, 16); return err == nil }
	switch {
	case m[1] != "": // SERVICE_HOST
		return isAddr(value)
	case m[2] != "": // SERVICE_PORT[_NAME]
		return isNumber(value)
	case m[3] == "PROTO":
		return value == "tcp" || value == "udp" || value == "sctp"
	case m[3] == "PORT":
		return isNumber(value)
	case m[3] == "ADDR":
		return isAddr(value)
	default: // FOO_PORT, FOO_PORT_8080_TCP
		return linkURL.MatchString(value)
	}
}

// setFromString parses an environment variable's value into field by its
// type. Lists are comma-separated; blanks around items are ignored.
func setFromString(field reflect.Value, value string) error {
	if field.Type() == durationType {
		d, err := time.ParseDuration(strings.TrimSpace(value))
		if err != nil {
			return fmt.Errorf("not a duration such as 200ms or 1h: %q", value)
		}
		field.SetInt(int64(d))
		return nil
	}
	switch field.Kind() {
	case reflect.String:
		field.SetString(value)
	case reflect.Int, reflect.Int64:
		n, err := strconv.ParseInt(strings.TrimSpace(value), 10, 64)
		if err != nil || field.OverflowInt(n) {
			return fmt.Errorf("not an integer: %q", value)
		}
		field.SetInt(n)
	case reflect.Bool:
		b, err := strconv.ParseBool(strings.TrimSpace(value))
		if err != nil {
			return fmt.Errorf("not a boolean (true or false): %q", value)
		}
		field.SetBool(b)
	case reflect.Slice:
		items := []string{}
		for item := range strings.SplitSeq(value, ",") {
			if item = strings.TrimSpace(item); item != "" {
				items = append(items, item)
			}
		}
		field.Set(reflect.ValueOf(items))
	default:
		// Only reachable if a field of a new type is added to Config.
		return fmt.Errorf("unsupported setting type %s", field.Type())
	}
	return nil
}
