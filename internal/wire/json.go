package wire

import (
	"fmt"
	"slices"

	json "github.com/goccy/go-json"

	"github.com/multiquery/multiquery/internal/jsonw"
)

// AppendJSON appends r's JSON to b, byte for byte what json.Marshal writes for it, by
// hand (package jsonw): a worker writes it for every attempt's audit record. Only the
// schema, a user's map of any depth, goes through the JSON package.
func (r Request) AppendJSON(b []byte) ([]byte, error) {
	b, err := AppendRequestHead(b, r.Model, r.Messages, r.Temperature, r.MaxCompletionTokens)
	if err != nil {
		return nil, err
	}
	b = jsonw.String(append(b, `,"response_format":`...), r.ResponseFormat)
	if len(r.Schema) > 0 {
		schema, err := json.Marshal(r.Schema)
		if err != nil {
			return nil, fmt.Errorf("schema: %w", err)
		}
		b = append(append(b, `,"schema":`...), schema...)
	}
	return append(b, '}'), nil
}

// AppendRequestHead appends what a Request and the chat completion body sent for it
// begin with, as json.Marshal writes them: `{"model":…,"messages":[…]`, then
// "temperature" when set and "max_completion_tokens" when not 0. The caller writes the
// response format and the closing brace.
func AppendRequestHead(b []byte, model string, messages []Message, temperature *float64, maxCompletionTokens int) ([]byte, error) {
	b = jsonw.String(append(b, `{"model":`...), model)
	b = appendMessages(append(b, `,"messages":`...), messages)
	if temperature != nil {
		var err error
		if b, err = jsonw.Float(append(b, `,"temperature":`...), *temperature); err != nil {
			return nil, fmt.Errorf("temperature: %w", err)
		}
	}
	if maxCompletionTokens != 0 {
		b = jsonw.Int(append(b, `,"max_completion_tokens":`...), int64(maxCompletionTokens))
	}
	return b, nil
}

// SizeHint is about the length of r's JSON without its schema: a buffer's capacity.
func (r Request) SizeHint() int {
	size := 160 + len(r.Model)
	for _, m := range r.Messages {
		size += 32 + len(m.Role) + len(m.Content)
	}
	return size
}

// appendMessages appends ms as json.Marshal writes a []Message (nil: null).
func appendMessages(b []byte, ms []Message) []byte {
	if ms == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i, m := range ms {
		if i > 0 {
			b = append(b, ',')
		}
		b = jsonw.String(append(b, `{"role":`...), m.Role)
		b = jsonw.String(append(b, `,"content":`...), m.Content)
		b = append(b, '}')
	}
	return append(b, ']')
}

// AppendJSON appends r's JSON to b, by hand (package jsonw): a worker writes one result
// for every query. It is what json.Marshal writes, fields in their order and map keys
// sorted, but for the raw values (fields, job, data): they are written as they are, not
// compacted, as they come from a JSON document this program decoded or wrote. An error
// goes through its own MarshalJSON.
func (r *Result) AppendJSON(b []byte) ([]byte, error) {
	b = jsonw.Int(append(b, `{"v":`...), int64(r.V))
	b = jsonw.String(append(b, `,"run":`...), r.Run)
	b = jsonw.Int(append(b, `,"row":`...), int64(r.Row))
	b = jsonw.String(append(b, `,"query":`...), r.Query)
	b = jsonw.Bool(append(b, `,"ok":`...), r.OK)
	if len(r.Fields) > 0 {
		b = append(b, `,"fields":{`...)
		var buf [16]string
		keys := buf[:0]
		for k := range r.Fields {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(jsonw.String(b, k), ':')
			b = appendRaw(b, r.Fields[k])
		}
		b = append(b, '}')
	}
	if r.Usage != nil {
		b = r.Usage.AppendJSON(append(b, `,"usage":`...))
	}
	if r.Model != "" {
		b = jsonw.String(append(b, `,"model":`...), r.Model)
	}
	if r.Deployment != "" {
		b = jsonw.String(append(b, `,"deployment":`...), r.Deployment)
	}
	if r.Error != nil {
		e, err := r.Error.MarshalJSON()
		if err != nil {
			return nil, fmt.Errorf("error: %w", err)
		}
		b = append(append(b, `,"error":`...), e...)
	}
	b = omitZero(b, `,"attempt":`, r.Attempt)
	b = omitZero(b, `,"calls":`, r.Calls)
	b = omitZero(b, `,"retries":`, r.Retries)
	if r.Billed != nil {
		b = r.Billed.AppendJSON(append(b, `,"billed":`...))
	}
	if r.Worker != "" {
		b = jsonw.String(append(b, `,"worker":`...), r.Worker)
	}
	if r.Elapsed != 0 {
		var err error
		if b, err = jsonw.Float(append(b, `,"elapsed_seconds":`...), r.Elapsed); err != nil {
			return nil, fmt.Errorf("elapsed_seconds: %w", err)
		}
	}
	if r.Cached {
		b = append(b, `,"cached":true`...)
	}
	if len(r.Job) > 0 {
		b = append(append(b, `,"job":`...), r.Job...)
	}
	if len(r.Data) > 0 {
		b = append(append(b, `,"data":`...), r.Data...)
	}
	return append(b, '}'), nil
}

func omitZero(b []byte, key string, n int) []byte {
	if n == 0 {
		return b
	}
	return jsonw.Int(append(b, key...), int64(n))
}

func appendRaw(b []byte, raw json.RawMessage) []byte {
	if len(raw) == 0 {
		return append(b, "null"...)
	}
	return append(b, raw...)
}

// AppendJSON appends u's JSON to b, as json.Marshal writes it (nil: null).
func (u *Usage) AppendJSON(b []byte) []byte {
	if u == nil {
		return append(b, "null"...)
	}
	b = jsonw.Int(append(b, `{"prompt_tokens":`...), u.PromptTokens)
	b = jsonw.Int(append(b, `,"completion_tokens":`...), u.CompletionTokens)
	b = jsonw.Int(append(b, `,"total_tokens":`...), u.TotalTokens)
	return append(b, '}')
}
