package config

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// decodeYAML parses data, expands ${VAR} in every scalar, rejects unknown keys and
// decodes into out (a pointer to a struct). Empty input leaves out unchanged.
//
// yaml.v3's Decoder.KnownFields only applies to a Decoder reading bytes, and
// neither to yaml.Node.Decode (needed to expand values after parsing) nor inside
// custom unmarshalers (OutputFields); checkKnownFields does the same check over the
// whole tree, and names the field path.
func decodeYAML(data []byte, out any, lookupEnv func(string) (string, bool)) error {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		if bytes.Contains(data, []byte("${")) {
			// Values are expanded after parsing, so inside [...] or {...} an
			// unquoted ${VAR} is a YAML syntax error.
			return fmt.Errorf("%w (inside [...] or {...}, quote values that use ${VAR})", err)
		}
		return err
	}
	if root.Kind == 0 {
		return nil
	}
	if err := expandNode(&root, lookupEnv); err != nil {
		return err
	}
	if errs := checkKnownFields(&root, reflect.TypeOf(out).Elem(), ""); len(errs) > 0 {
		return errors.Join(errs...)
	}
	return root.Decode(out)
}

// quotedOrTagged are the styles whose type does not come from the value's text.
const quotedOrTagged = yaml.TaggedStyle | yaml.DoubleQuotedStyle | yaml.SingleQuotedStyle | yaml.LiteralStyle | yaml.FoldedStyle

// expandNode expands environment references in every scalar under n.
func expandNode(n *yaml.Node, lookupEnv func(string) (string, bool)) error {
	var errs []error
	var walk func(*yaml.Node)
	walk = func(n *yaml.Node) {
		switch n.Kind {
		case yaml.DocumentNode, yaml.SequenceNode, yaml.MappingNode:
			for _, c := range n.Content {
				walk(c)
			}
		case yaml.ScalarNode:
			if !strings.Contains(n.Value, "$") {
				return
			}
			v, err := expandEnv(n.Value, lookupEnv)
			if err != nil {
				errs = append(errs, fmt.Errorf("line %d: %w", n.Line, err))
				return
			}
			if v != n.Value && n.Style&quotedOrTagged == 0 {
				// The parser typed "${T}" as a string; let the decoder resolve the
				// expanded text ("60", "true", "0.5") as if it had been written.
				n.Tag = ""
			}
			n.Value = v
		}
		// Alias nodes point at an anchor expanded where it is defined.
	}
	walk(n)
	return errors.Join(errs...)
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// expandEnv replaces ${VAR} and ${VAR:-default} with values from lookupEnv and $$
// with $. Any other $ is kept. An unset VAR without a default is an error naming it.
func expandEnv(s string, lookupEnv func(string) (string, bool)) (string, error) {
	var b strings.Builder
	var errs []error
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '$' || i+1 == len(s) {
			b.WriteByte(c)
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '{':
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				return "", fmt.Errorf("unterminated %q (write $$ for a literal $)", s[i:])
			}
			ref := s[i+2 : i+2+end]
			name, def, hasDefault := strings.Cut(ref, ":-")
			if !envName.MatchString(name) {
				errs = append(errs, fmt.Errorf("invalid variable name in ${%s} (write $$ for a literal $)", ref))
			} else if v, ok := lookupEnv(name); ok && (v != "" || !hasDefault) {
				b.WriteString(v)
			} else if hasDefault {
				b.WriteString(def)
			} else {
				errs = append(errs, fmt.Errorf("${%s}: environment variable %s is not set", name, name))
			}
			i += 2 + end
		default:
			b.WriteByte(c)
		}
	}
	if len(errs) > 0 {
		return "", errors.Join(errs...)
	}
	return b.String(), nil
}

var (
	outputFieldsType = reflect.TypeFor[OutputFields]()
	caseStudyType    = reflect.TypeFor[CaseStudy]()
	criterionType    = reflect.TypeFor[Criterion]()
)

// checkKnownFields reports mapping keys under n that t has no field for.
func checkKnownFields(n *yaml.Node, t reflect.Type, path string) []error {
	for n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == caseStudyType || t == criterionType:
		// Open mappings: extra keys are kept for templates.
		return nil
	case t == outputFieldsType:
		if n.Kind != yaml.MappingNode {
			return nil // UnmarshalYAML reports the shape.
		}
		var errs []error
		for i := 0; i+1 < len(n.Content); i += 2 {
			errs = append(errs, checkKnownFields(n.Content[i+1], reflect.TypeFor[outputFieldSpec](), join(path, n.Content[i].Value))...)
		}
		return errs
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return nil // The decoder reports the type mismatch.
		}
		fields := yamlFields(t)
		var errs []error
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Value == "<<" && k.Tag == "!!merge" {
				errs = append(errs, checkKnownFields(v, t, path)...)
				continue
			}
			f, ok := fields[k.Value]
			if !ok {
				where := ""
				if path != "" {
					where = " in " + path
				}
				errs = append(errs, fmt.Errorf("line %d: unknown field %q%s", k.Line, k.Value, where))
				continue
			}
			if f.refuseZero && writtenZero(v, f.typ) {
				errs = append(errs, fmt.Errorf("line %d: %s: must be > 0, got %s (leave it out for the default)", v.Line, join(path, k.Value), v.Value))
			}
			errs = append(errs, checkKnownFields(v, f.typ, join(path, k.Value))...)
		}
		return errs
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return nil
		}
		var errs []error
		for i := 0; i+1 < len(n.Content); i += 2 {
			errs = append(errs, checkKnownFields(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value))...)
		}
		return errs
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return nil
		}
		var errs []error
		for i, c := range n.Content {
			errs = append(errs, checkKnownFields(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i))...)
		}
		return errs
	}
	return nil
}

// yamlField is a struct field as the YAML checks see it.
type yamlField struct {
	typ reflect.Type
	// refuseZero: the field's zero value stands for "not set" (the default applies),
	// so a 0 written in the file is refused rather than silently replaced (tag
	// `zero:"refused"`).
	refuseZero bool
}

// writtenZero says whether scalar n decodes to the zero value of t.
func writtenZero(n *yaml.Node, t reflect.Type) bool {
	if n.Kind != yaml.ScalarNode {
		return false
	}
	v := reflect.New(t)
	return n.Decode(v.Interface()) == nil && v.Elem().IsZero()
}

// yamlFields maps the YAML keys of struct type t to their fields.
func yamlFields(t reflect.Type) map[string]yamlField {
	m := make(map[string]yamlField, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = strings.ToLower(f.Name)
		}
		m[name] = yamlField{typ: f.Type, refuseZero: f.Tag.Get("zero") == "refused"}
	}
	return m
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// normalize converts the map[any]any that YAML produces for non-string keys into
// map[string]any, recursively, so templates and the canonical JSON hash see plain
// string-keyed maps.
func normalize(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = normalize(e)
		}
		return x
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[fmt.Sprint(k)] = normalize(e)
		}
		return m
	case []any:
		for i, e := range x {
			x[i] = normalize(e)
		}
		return x
	}
	return v
}
