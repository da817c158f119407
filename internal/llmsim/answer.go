package llmsim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	"regexp"
	"strconv"
	"strings"
)

// FieldsPhrase introduces the field list in a prompt when no json_schema
// response format is given.
const FieldsPhrase = "Respond with a JSON object with these fields: "

var (
	markerRe    = regexp.MustCompile(`\[\[mark:([A-Za-z0-9_.:-]+)\]\]`)
	directiveRe = regexp.MustCompile(`\[\[fault:([A-Za-z0-9_]+)\]\]`)
)

// markers returns the distinct marker tokens of text in order of appearance.
func markers(text string) []string {
	var out []string
	seen := map[string]bool{}
	for _, m := range markerRe.FindAllStringSubmatch(text, -1) {
		if !seen[m[1]] {
			seen[m[1]] = true
			out = append(out, m[1])
		}
	}
	return out
}

// directive returns the first known fault kind named by a [[fault:KIND]]
// directive in text, or "".
func directive(text string) string {
	for _, m := range directiveRe.FindAllStringSubmatch(text, -1) {
		if isFaultKind(m[1]) {
			return m[1]
		}
	}
	return ""
}

func isFaultKind(k string) bool {
	for _, f := range FaultKinds {
		if f == k {
			return true
		}
	}
	return false
}

// Node kinds of a shape, the simulator's view of a schema.
const (
	kindString  = "string"
	kindInteger = "integer"
	kindNumber  = "number"
	kindBoolean = "boolean"
	kindObject  = "object"
	kindArray   = "array"
	kindNull    = "null"
	kindEnum    = "enum"
)

// shape is what the answer must look like.
type shape struct {
	kind     string
	enum     []any   // kindEnum
	fields   []field // kindObject, in declaration order
	items    *shape  // kindArray
	min, max *float64
	minItems int
	maxItems int // 0 = no limit
}

type field struct {
	name  string
	shape shape
}

// answerShape decides the shape of the answer: the json_schema response
// format if any, else the last FieldsPhrase of the messages, else
// {"answer": string}.
func answerShape(req *chatRequest) shape {
	if rf := req.ResponseFormat; rf != nil && rf.Type == "json_schema" && rf.JSONSchema != nil && len(rf.JSONSchema.Schema) > 0 {
		if sh, err := parseSchema(rf.JSONSchema.Schema); err == nil && sh.kind == kindObject {
			return sh
		}
	}
	for i := len(req.Messages) - 1; i >= 0; i-- {
		content := string(req.Messages[i].Content)
		idx := strings.LastIndex(content, FieldsPhrase)
		if idx < 0 {
			continue
		}
		if sh, err := parseFieldList(content[idx+len(FieldsPhrase):]); err == nil {
			return sh
		}
		break
	}
	return shape{kind: kindObject, fields: []field{{name: "answer", shape: shape{kind: kindString}}}}
}

// parseFieldList reads the JSON object that starts text (after optional
// spaces) and maps field names to "string", "integer", "number", "boolean" or
// "enum:a|b|c". Unknown types are treated as strings.
func parseFieldList(text string) (shape, error) {
	text = strings.TrimLeft(text, " \t\r\n")
	end := matchingBrace(text)
	if end < 0 {
		return shape{}, fmt.Errorf("field list: no complete JSON object")
	}
	keys, raws, err := orderedObject([]byte(text[:end+1]))
	if err != nil {
		return shape{}, fmt.Errorf("field list: %w", err)
	}
	sh := shape{kind: kindObject}
	for i, k := range keys {
		var typ string
		if err := json.Unmarshal(raws[i], &typ); err != nil {
			return shape{}, fmt.Errorf("field list %q: type must be a string: %w", k, err)
		}
		sh.fields = append(sh.fields, field{name: k, shape: typeShape(typ)})
	}
	return sh, nil
}

func typeShape(typ string) shape {
	typ = strings.TrimSpace(typ)
	if rest, ok := strings.CutPrefix(typ, "enum:"); ok {
		var vals []any
		for _, v := range strings.Split(rest, "|") {
			vals = append(vals, v)
		}
		return shape{kind: kindEnum, enum: vals}
	}
	switch typ {
	case kindInteger, kindNumber, kindBoolean:
		return shape{kind: typ}
	default:
		return shape{kind: kindString}
	}
}

// matchingBrace returns the index of the '}' closing the object that starts
// text, honouring JSON strings, or -1.
func matchingBrace(text string) int {
	if !strings.HasPrefix(text, "{") {
		return -1
	}
	depth, inString, escaped := 0, false, false
	for i := 0; i < len(text); i++ {
		c := text[i]
		switch {
		case inString && escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case inString && c == '"':
			inString = false
		case inString:
		case c == '"':
			inString = true
		case c == '{':
			depth++
		case c == '}':
			depth--
			if depth == 0 {
				return i
			}
		}
	}
	return -1
}

// orderedObject decodes a JSON object keeping its key order.
func orderedObject(b []byte) ([]string, []json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return nil, nil, fmt.Errorf("read object: %w", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, nil, fmt.Errorf("want a JSON object")
	}
	var keys []string
	var raws []json.RawMessage
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, fmt.Errorf("read key: %w", err)
		}
		key, ok := tok.(string)
		if !ok {
			return nil, nil, fmt.Errorf("want a string key")
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, nil, fmt.Errorf("read %q: %w", key, err)
		}
		keys = append(keys, key)
		raws = append(raws, raw)
	}
	return keys, raws, nil
}

// Bounds that keep a hostile schema from exhausting memory.
const (
	maxSchemaDepth = 8   // nesting, $ref recursion included
	maxArrayItems  = 100 // items generated for one array
	maxBound       = 1e15
)

// clampBound keeps minimum/maximum where int64 arithmetic is exact.
func clampBound(v float64) float64 {
	if math.IsNaN(v) {
		return 0
	}
	return math.Max(-maxBound, math.Min(maxBound, v))
}

// parseSchema reads the subset of JSON Schema that structured outputs use:
// type (or a list of types), enum, const, properties, items, anyOf/oneOf
// (first branch), $ref into $defs or definitions, minimum/maximum and
// minItems/maxItems.
func parseSchema(raw json.RawMessage) (shape, error) {
	var root map[string]json.RawMessage
	if err := json.Unmarshal(raw, &root); err != nil {
		return shape{}, fmt.Errorf("schema: %w", err)
	}
	return parseNode(root, root, 0)
}

func parseNode(node, root map[string]json.RawMessage, depth int) (shape, error) {
	if depth > maxSchemaDepth {
		return shape{kind: kindNull}, nil
	}
	if ref, ok := node["$ref"]; ok {
		var r string
		if err := json.Unmarshal(ref, &r); err != nil {
			return shape{}, fmt.Errorf("$ref: %w", err)
		}
		target, err := resolveRef(r, root)
		if err != nil {
			return shape{}, err
		}
		return parseNode(target, root, depth+1)
	}
	if c, ok := node["const"]; ok {
		var v any
		if err := json.Unmarshal(c, &v); err != nil {
			return shape{}, fmt.Errorf("const: %w", err)
		}
		return shape{kind: kindEnum, enum: []any{v}}, nil
	}
	if e, ok := node["enum"]; ok {
		var vals []any
		if err := json.Unmarshal(e, &vals); err != nil || len(vals) == 0 {
			return shape{}, fmt.Errorf("enum: want a non-empty array")
		}
		return shape{kind: kindEnum, enum: vals}, nil
	}
	for _, key := range []string{"anyOf", "oneOf", "allOf"} {
		if alts, ok := node[key]; ok {
			var branches []map[string]json.RawMessage
			if err := json.Unmarshal(alts, &branches); err != nil || len(branches) == 0 {
				return shape{}, fmt.Errorf("%s: want a non-empty array of schemas", key)
			}
			// Prefer a non-null branch so nullable fields still carry a value.
			for _, b := range branches {
				sh, err := parseNode(b, root, depth+1)
				if err == nil && sh.kind != kindNull {
					return sh, nil
				}
			}
			return parseNode(branches[0], root, depth+1)
		}
	}
	sh := shape{kind: schemaType(node)}
	sh.min, sh.max = number(node["minimum"]), number(node["maximum"])
	switch sh.kind {
	case kindObject:
		props, ok := node["properties"]
		if !ok {
			return sh, nil
		}
		keys, raws, err := orderedObject(props)
		if err != nil {
			return shape{}, fmt.Errorf("properties: %w", err)
		}
		for i, k := range keys {
			var child map[string]json.RawMessage
			if err := json.Unmarshal(raws[i], &child); err != nil {
				return shape{}, fmt.Errorf("properties.%s: %w", k, err)
			}
			csh, err := parseNode(child, root, depth+1)
			if err != nil {
				return shape{}, fmt.Errorf("properties.%s: %w", k, err)
			}
			sh.fields = append(sh.fields, field{name: k, shape: csh})
		}
	case kindArray:
		item := shape{kind: kindString}
		if raw, ok := node["items"]; ok {
			var child map[string]json.RawMessage
			if err := json.Unmarshal(raw, &child); err != nil {
				return shape{}, fmt.Errorf("items: %w", err)
			}
			var err error
			if item, err = parseNode(child, root, depth+1); err != nil {
				return shape{}, fmt.Errorf("items: %w", err)
			}
		}
		sh.items = &item
		if v := number(node["minItems"]); v != nil {
			sh.minItems = int(*v)
		}
		if v := number(node["maxItems"]); v != nil {
			sh.maxItems = int(*v)
		}
	}
	return sh, nil
}

// schemaType reads "type", which may be a list like ["string","null"]; the
// first non-null entry wins.
func schemaType(node map[string]json.RawMessage) string {
	raw, ok := node["type"]
	if !ok {
		if _, ok := node["properties"]; ok {
			return kindObject
		}
		if _, ok := node["items"]; ok {
			return kindArray
		}
		return kindString
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return one
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err == nil {
		for _, t := range many {
			if t != kindNull {
				return t
			}
		}
		if len(many) > 0 {
			return many[0]
		}
	}
	return kindString
}

func resolveRef(ref string, root map[string]json.RawMessage) (map[string]json.RawMessage, error) {
	if ref == "#" {
		return root, nil
	}
	for _, prefix := range []string{"#/$defs/", "#/definitions/"} {
		name, ok := strings.CutPrefix(ref, prefix)
		if !ok {
			continue
		}
		var defs map[string]json.RawMessage
		if err := json.Unmarshal(root[strings.Trim(prefix[1:], "/")], &defs); err != nil {
			return nil, fmt.Errorf("$ref %q: %w", ref, err)
		}
		var target map[string]json.RawMessage
		if err := json.Unmarshal(defs[name], &target); err != nil {
			return nil, fmt.Errorf("$ref %q: %w", ref, err)
		}
		return target, nil
	}
	return nil, fmt.Errorf("$ref %q: only #/$defs/ and #/definitions/ are supported", ref)
}

func number(raw json.RawMessage) *float64 {
	if raw == nil {
		return nil
	}
	var v float64
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil
	}
	return &v
}

// object is a JSON object that keeps its member order when marshalled.
type object []member

type member struct {
	key   string
	value any
}

func (o object) MarshalJSON() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			buf.WriteByte(',')
		}
		k, err := json.Marshal(m.key)
		if err != nil {
			return nil, fmt.Errorf("marshal key: %w", err)
		}
		v, err := json.Marshal(m.value)
		if err != nil {
			return nil, fmt.Errorf("marshal %q: %w", m.key, err)
		}
		buf.Write(k)
		buf.WriteByte(':')
		buf.Write(v)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// generator builds deterministic values: each is a function of the field's
// path and the prompt text only.
type generator struct {
	text    string
	markers []string
}

func (g generator) hash(path string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(path))
	h.Write([]byte{0})
	h.Write([]byte(g.text))
	return mix(h.Sum64())
}

// mix is the splitmix64 finaliser; FNV alone spreads short inputs poorly.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

var words = []string{
	"amber", "birch", "cobalt", "delta", "ember", "fjord", "granite", "harbor",
	"indigo", "juniper", "kestrel", "lumen", "meadow", "nimbus", "onyx", "prairie",
	"quartz", "raven", "sierra", "tundra", "umber", "vortex", "willow", "zephyr",
}

func (g generator) value(sh shape, path, name string) any {
	h := g.hash(path)
	switch sh.kind {
	case kindInteger:
		lo, hi := int64(1), int64(5)
		if sh.min != nil {
			lo = int64(math.Ceil(clampBound(*sh.min)))
			if sh.max == nil {
				hi = lo + 4
			}
		}
		if sh.max != nil {
			hi = int64(math.Floor(clampBound(*sh.max)))
			if sh.min == nil {
				lo = min(lo, hi)
			}
		}
		if hi < lo {
			return lo
		}
		return lo + int64(h%uint64(hi-lo+1))
	case kindNumber:
		frac := float64(h>>11) / (1 << 53)
		// Round so the value survives a text round trip unchanged.
		frac = math.Round(frac*1e6) / 1e6
		if frac >= 1 {
			frac = 0.999999
		}
		switch {
		case sh.min != nil && sh.max != nil && *sh.max >= *sh.min:
			lo, hi := clampBound(*sh.min), clampBound(*sh.max)
			return lo + frac*(hi-lo)
		case sh.min != nil:
			return clampBound(*sh.min) + frac
		case sh.max != nil && *sh.max < 1:
			return clampBound(*sh.max) - frac
		default:
			return frac
		}
	case kindBoolean:
		return h&1 == 1
	case kindEnum:
		return sh.enum[h%uint64(len(sh.enum))]
	case kindNull:
		return nil
	case kindObject:
		obj := object{}
		for _, f := range sh.fields {
			obj = append(obj, member{key: f.name, value: g.value(f.shape, path+"."+f.name, f.name)})
		}
		return obj
	case kindArray:
		n := min(max(2, sh.minItems), maxArrayItems)
		if sh.maxItems > 0 && n > sh.maxItems {
			n = sh.maxItems
		}
		items := make([]any, n)
		for i := range items {
			items[i] = g.value(*sh.items, path+"["+strconv.Itoa(i)+"]", name)
		}
		return items
	default:
		return g.stringValue(name, h)
	}
}

// stringValue is a string value: the field name, every marker, two words.
func (g generator) stringValue(name string, h uint64) string {
	parts := []string{name + ":"}
	parts = append(parts, g.markers...)
	parts = append(parts, words[h%uint64(len(words))], words[(h>>8)%uint64(len(words))])
	return strings.Join(parts, " ")
}

// answer is the generated top-level object and the shape it follows.
type answer struct {
	shape shape
	obj   object
	gen   generator
}

func newAnswer(req *chatRequest) answer {
	text := req.text()
	g := generator{text: text, markers: markers(text)}
	sh := answerShape(req)
	obj, _ := g.value(sh, "", "").(object)
	return answer{shape: sh, obj: obj, gen: g}
}

func (a answer) json() string {
	b, err := json.Marshal(a.obj)
	if err != nil {
		// Values are built from JSON-safe types only.
		panic(fmt.Sprintf("llmsim: marshal answer: %v", err))
	}
	return string(b)
}

// victim picks the top-level field a missing_field or wrong_type fault hits.
func (a answer) victim() int {
	if len(a.obj) == 0 {
		return -1
	}
	return int(a.gen.hash("\x00victim") % uint64(len(a.obj)))
}

// withoutField drops one top-level field.
func (a answer) withoutField() string {
	i := a.victim()
	if i >= 0 {
		a.obj = append(append(object{}, a.obj[:i]...), a.obj[i+1:]...)
	}
	return a.json()
}

// withWrongType gives one top-level field a value of the wrong JSON type.
func (a answer) withWrongType() string {
	i := a.victim()
	if i < 0 {
		return a.json()
	}
	obj := append(object{}, a.obj...)
	obj[i].value = wrongValue(obj[i].value)
	a.obj = obj
	return a.json()
}

func wrongValue(v any) any {
	switch v.(type) {
	case string:
		return 42
	case int64, float64:
		return "three"
	case bool:
		return "yes"
	case nil:
		return "null"
	default:
		// objects and arrays
		return "not an object"
	}
}

// truncated cuts the JSON in half, as a model hitting max_tokens does.
func (a answer) truncated() string {
	s := a.json()
	return s[:len(s)/2]
}

// invalidJSON is prose around JSON-like text no parser accepts.
func (a answer) invalidJSON() string {
	return "Sure! Here is the answer you asked for: " + strings.ReplaceAll(a.json(), `"`, `'`)
}
