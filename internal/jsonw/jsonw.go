// Package jsonw writes JSON by hand, appending to a byte slice, as encoding/json writes
// it: for the few messages a worker writes on every query (the request body, its audit
// record and its result), where a reflective encoder costs more than the message.
// goccy's encoder, the fastest of them, runs a virtual machine whose frame of kilobytes
// grew each handler goroutine's stack again after every garbage collection had shrunk
// it: the three written here instead cost a worker ~20 µs a query less at 0 latency
// (scripts/ab-workers.sh both ways round; docs/BENCHMARKS.md, "Cost per query").
package jsonw

import (
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

const hexDigits = "0123456789abcdef"

// String appends s as a JSON string as encoding/json does: quotes, backslashes and
// control characters escaped, <, > and & as \u escapes, invalid UTF-8 as U+FFFD, and
// U+2028 and U+2029 escaped (JavaScript reads them as line ends).
func String(b []byte, s string) []byte {
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
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// Float appends f as encoding/json does: the shortest form that reads back as f, with an
// exponent only below 1e-6 or from 1e21, written with at least two digits. NaN and the
// infinities, which JSON cannot write, are an error (b unchanged).
func Float(b []byte, f float64) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return b, fmt.Errorf("%v is not a JSON number", f)
	}
	format := byte('f')
	if a := math.Abs(f); a != 0 && (a < 1e-6 || a >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' { // e-07, not e-7: encoding/json's "clean up e-09 to e-9"
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b, nil
}

// Int appends i.
func Int(b []byte, i int64) []byte { return strconv.AppendInt(b, i, 10) }

// Bool appends v.
func Bool(b []byte, v bool) []byte { return strconv.AppendBool(b, v) }

// Time appends t as time.Time's MarshalJSON does (RFC 3339 with nanoseconds, quoted),
// for years 0-9999.
func Time(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}
