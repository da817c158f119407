package llm

import (
	"fmt"

	json "github.com/goccy/go-json"

	"github.com/multiquery/multiquery/internal/jsonw"
	"github.com/multiquery/multiquery/internal/wire"
)

// appendChatRequest appends the JSON of body to b, byte for byte what encoding/json
// writes for it (package jsonw: a worker 11-15 µs a call less than goccy's encoder in
// scripts/ab-workers.sh). Only a json_schema's schema, a user's map of any depth, goes
// through the JSON package.
func appendChatRequest(b []byte, body chatRequest) ([]byte, error) {
	b, err := wire.AppendRequestHead(b, body.Model, body.Messages, body.Temperature, body.MaxCompletionTokens)
	if err != nil {
		return nil, err
	}
	b = append(b, `,"response_format":{"type":`...)
	b = jsonw.String(b, body.ResponseFormat.Type)
	if s := body.ResponseFormat.JSONSchema; s != nil {
		b = append(b, `,"json_schema":{"name":`...)
		b = jsonw.String(b, s.Name)
		b = append(b, `,"strict":`...)
		b = jsonw.Bool(b, s.Strict)
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
