package llm

import (
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"

	json "github.com/goccy/go-json"

	"github.com/multiquery/multiquery/internal/wire"
)

// appendChatRequest appends the JSON of body to b, byte for byte what encoding/json
// writes for it, field by field: the reflective encoder (goccy's, whose virtual machine
// has a frame of kilobytes) grew each handler's stack again after every garbage
// collection had shrunk it, and cost a worker 11-15 µs a call at 0 latency
// (scripts/ab-workers.sh, docs/BENCHMARKS.md "Cost per query"). Only a json_schema's
// schema, a user's map of any depth, goes through the JSON package.
func appendChatRequest(b []byte, body chatRequest) ([]byte, error) {
	b = append(b, `{"model":`...)
	b = appendJSONString(b, body.Model)
	b = append(b, `,"messages":`...)
	if body.Messages == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i, m := range body.Messages {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendMessage(b, m)
		}
		b = append(b, ']')
	}
	if body.Temperature != nil {
		t := *body.Temperature
		if math.IsNaN(t) || math.IsInf(t, 0) {
			return nil, fmt.Errorf("temperature %v is not a JSON number", t)
		}
		b = append(b, `,"temperature":`...)
		b = appendJSONFloat(b, t)
	}
	if body.MaxCompletionTokens != 0 {
		b = append(b, `,"max_completion_tokens":`...)
		b = strconv.AppendInt(b, int64(body.MaxCompletionTokens), 10)
	}
	b = append(b, `,"response_format":{"type":`...)
	b = appendJSONString(b, body.ResponseFormat.Type)
	if s := body.ResponseFormat.JSONSchema; s != nil {
		b = append(b, `,"json_schema":{"name":`...)
		b = appendJSONString(b, s.Name)
		b = append(b, `,"strict":`...)
		b = strconv.AppendBool(b, s.Strict)
		if len(s.Schema) > 0 {
			schema, err := json.Marshal(s.Schema)
			if err != nil {
				return nil, fmt.Errorf("json_schema: %w", err)
			}
			b = append(b, `,"schema":`...)
			b = append(b, schema...)
		}
		b = append(b, '}')
	}
	return append(b, "}}"...), nil
}

func appendMessage(b []byte, m wire.Message) []byte {
	b = append(b, `{"role":`...)
	b = appendJSONString(b, m.Role)
	b = append(b, `,"content":`...)
	b = appendJSONString(b, m.Content)
	return append(b, '}')
}

// appendJSONFloat writes f as encoding/json does: shortest form, exponent only below
// 1e-6 or from 1e21, with a two-digit exponent.
func appendJSONFloat(b []byte, f float64) []byte {
	format := byte('f')
	if a := math.Abs(f); a != 0 && (a < 1e-6 || a >= 1e21) {
		format = 'e'
	}
	start := len(b)
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' { // clean up e-09 to e-9
		if n := len(b) - start; n >= 4 && b[len(b)-4] == 'e' && b[len(b)-3] == '-' && b[len(b)-2] == '0' {
			b[len(b)-2] = b[len(b)-1]
			b = b[:len(b)-1]
		}
	}
	return b
}

const hexDigits = "0123456789abcdef"

// appendJSONString writes s as a JSON string as encoding/json does: quotes, backslashes
// and control characters escaped, <, > and & as \u escapes, invalid UTF-8 as U+FFFD, and
// U+2028 and U+2029 escaped (JavaScript reads them as line ends).
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
