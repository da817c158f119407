package llm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/multiquery/multiquery/internal/jsonw"
	"github.com/multiquery/multiquery/internal/wire"
)

// ParseAnswer maps a model answer onto the job's output fields. The answer must be one
// JSON object (a surrounding ``` code fence is tolerated); every mapped field must be
// present, non-null and of its declared type. Errors are *PermanentError with reason
// invalid_json, missing_output_field or type_mismatch, naming the field.
func ParseAnswer(content string, outputs []wire.OutputField) (map[string]json.RawMessage, error) {
	body := stripFence(content)
	dec := json.NewDecoder(strings.NewReader(body))
	dec.UseNumber()
	var obj map[string]any
	if strings.HasPrefix(body, "{") {
		// The usual answer, an object: decoded once, straight into its fields.
		if err := dec.Decode(&obj); err != nil {
			return nil, &PermanentError{Reason: wire.ReasonInvalidJSON, Message: fmt.Sprintf("answer is not JSON: %v (answer starts %q)", err, head(content))}
		}
		if _, err := dec.Token(); !errors.Is(err, io.EOF) {
			return nil, &PermanentError{Reason: wire.ReasonInvalidJSON, Message: fmt.Sprintf("trailing data after the JSON value (answer starts %q)", head(content))}
		}
		return outputFields(obj, outputs)
	}
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return nil, &PermanentError{Reason: wire.ReasonInvalidJSON, Message: fmt.Sprintf("answer is not JSON: %v (answer starts %q)", err, head(content))}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, &PermanentError{Reason: wire.ReasonInvalidJSON, Message: fmt.Sprintf("trailing data after the JSON value (answer starts %q)", head(content))}
	}
	if t := bytes.TrimSpace(raw); len(t) == 0 || t[0] != '{' {
		return nil, &PermanentError{Reason: wire.ReasonInvalidJSON, Message: fmt.Sprintf("answer is JSON but not an object (answer starts %q)", head(content))}
	}
	d2 := json.NewDecoder(bytes.NewReader(raw))
	d2.UseNumber()
	if err := d2.Decode(&obj); err != nil {
		return nil, &PermanentError{Reason: wire.ReasonInvalidJSON, Message: err.Error()}
	}
	return outputFields(obj, outputs)
}

// outputFields maps the answer's object onto the output columns, checking each type.
func outputFields(obj map[string]any, outputs []wire.OutputField) (map[string]json.RawMessage, error) {
	out := make(map[string]json.RawMessage, len(outputs))
	for _, o := range outputs {
		v, ok := obj[o.Field]
		if !ok || v == nil {
			return nil, &PermanentError{Reason: wire.ReasonMissingField, Field: o.Field, Message: fmt.Sprintf("the answer has no %q (want %s)", o.Field, o.Type)}
		}
		enc, err := typed(v, o)
		if err != nil {
			return nil, &PermanentError{Reason: wire.ReasonTypeMismatch, Field: o.Field, Message: err.Error()}
		}
		out[o.Column] = enc
	}
	return out, nil
}

func typed(v any, o wire.OutputField) (json.RawMessage, error) {
	switch o.Type {
	case wire.TypeString:
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("want string, got %s", kind(v))
		}
		return jsonw.String(nil, s), nil
	case wire.TypeEnum:
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("want one of %v, got %s", o.Values, kind(v))
		}
		for _, allowed := range o.Values {
			if s == allowed {
				return jsonw.String(nil, s), nil
			}
		}
		return nil, fmt.Errorf("want one of %v, got %q", o.Values, s)
	case wire.TypeBoolean:
		b, ok := v.(bool)
		if !ok {
			return nil, fmt.Errorf("want boolean, got %s", kind(v))
		}
		return jsonw.Bool(nil, b), nil
	case wire.TypeInteger:
		n, ok := v.(json.Number)
		if !ok {
			return nil, fmt.Errorf("want integer, got %s", kind(v))
		}
		if i, err := strconv.ParseInt(n.String(), 10, 64); err == nil {
			return jsonw.Int(nil, i), nil
		}
		f, err := n.Float64()
		if err != nil || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
			return nil, fmt.Errorf("want integer, got %s", n)
		}
		return jsonw.Int(nil, int64(f)), nil
	case wire.TypeNumber:
		n, ok := v.(json.Number)
		if !ok {
			return nil, fmt.Errorf("want number, got %s", kind(v))
		}
		f, err := n.Float64()
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return nil, fmt.Errorf("want finite number, got %s", n)
		}
		return json.RawMessage(n.String()), nil
	}
	return nil, fmt.Errorf("unknown output type %q", o.Type)
}

func kind(v any) string {
	switch x := v.(type) {
	case string:
		return fmt.Sprintf("string %q", head(x))
	case json.Number:
		return "number " + x.String()
	case bool:
		return "boolean"
	case map[string]any:
		return "object"
	case []any:
		return "array"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

// stripFence removes a Markdown code fence (```json ... ```) around the answer.
func stripFence(s string) string {
	t := strings.TrimSpace(s)
	if !strings.HasPrefix(t, "```") {
		return t
	}
	t = strings.TrimPrefix(t, "```")
	if nl := strings.IndexByte(t, '\n'); nl >= 0 {
		t = t[nl+1:] // drop the info string ("json")
	} else {
		return s
	}
	t = strings.TrimSpace(t)
	t = strings.TrimSuffix(t, "```")
	return strings.TrimSpace(t)
}

func head(s string) string {
	n := 80
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) { // not inside a character
		n--
	}
	return s[:n] + "..."
}
