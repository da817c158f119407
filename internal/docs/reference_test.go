package docs

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"gopkg.in/yaml.v3"

	"github.com/multiquery/multiquery/internal/config"
)

// operations is the configuration reference: its `| key |` tables list the keys of the
// YAML files users write, its `| flag |` tables the flags of the commands.
const operations = "docs/OPERATIONS.md"

// configFiles are the YAML files users write, and the section of docs/OPERATIONS.md
// whose `| key | default | meaning |` table lists every key of each.
var configFiles = []struct {
	name    string
	section string // its heading in docs/OPERATIONS.md
	keys    func(t *testing.T) keySet
}{
	{"the worker config", "## Worker config", func(t *testing.T) keySet { return structKeys(t, reflect.TypeFor[config.Worker]()) }},
	{"the pipeline config", "## Pipeline config", func(t *testing.T) keySet { return structKeys(t, reflect.TypeFor[config.Pipeline]()) }},
	{"mqctl provision's limits file", "### Provisioning", limitsKeys},
}

// The configuration reference is complete, both ways: every key the worker config, the
// pipeline config and the limits file of mqctl provision accept (their structs, walked
// as the decoder reads them) has a row in its table of docs/OPERATIONS.md, and every
// row names a key the code accepts, so a key added, renamed or removed in the code
// cannot be missing from the docs or linger in them. A key is written as its full path:
// `llm.model` below `llm`, `queries[].name` for the items of a list,
// `output_fields.<field>.type` below a mapping's keys (the word in <> is free); a table
// introduced by "Keys of `deployments.<alias>`" lists the keys below that path. A key
// whose value is a struct needs no row of its own (its keys have them); a list or a
// mapping does.
func TestOperationsDocumentsEveryConfigKey(t *testing.T) {
	doc := readDoc(t, operations)
	known := map[string]bool{}
	for _, cf := range configFiles {
		known[cf.section] = true
		code := cf.keys(t)
		if len(code) < 5 {
			t.Fatalf("%s: found only %d keys in the code: the walk is broken", cf.name, len(code))
		}
		documented := map[string]bool{}
		tables := 0
		for _, tb := range doc.tables {
			if tb.section != cf.section || tb.header[0] != "key" {
				continue
			}
			tables++
			for _, p := range parentPaths(tb.prefix) {
				documented[normalizeKey(p)] = true
			}
			for _, r := range tb.rows {
				for _, k := range codeSpans(r.cells[0]) {
					full := normalizeKey(joinKey(tb.prefix, k))
					documented[full] = true
					if _, ok := code[full]; !ok {
						t.Errorf("%s:%d: key `%s` is documented in %q, but %s has no key %s", operations, r.line, k, cf.section, cf.name, displayKey(full))
					}
				}
			}
		}
		if tables == 0 {
			t.Errorf("%s: section %q has no `| key | default | meaning |` table for %s", operations, cf.section, cf.name)
			continue
		}
		for _, k := range sortedKeys(code) {
			if code[k] && !documented[k] {
				t.Errorf("%s: %s accepts key `%s`, which has no row in the table of %q", operations, cf.name, displayKey(k), cf.section)
			}
		}
	}
	for _, tb := range doc.tables {
		if tb.header[0] == "key" && !known[tb.section] {
			t.Errorf("%s:%d: a `| key |` table in %q, which documents no configuration file this test knows: add it to configFiles", operations, tb.line, tb.section)
		}
	}
}

// keySet are the keys a configuration file accepts, by full path ("<>" for a mapping's
// keys); true when the key needs a row of its own (anything but a struct's key).
type keySet map[string]bool

// structKeys walks the YAML keys of a config type the way internal/config decodes it
// (decodeYAML, yamlFields): an exported field's yaml tag names its key (an untagged one
// is its lower-cased name, "-" none), pointers are followed, a struct's keys go below
// its key, a list's items below `key[]`, a mapping's values below `key.<>`. A type seen
// before (queries[].output_fields, as output_fields) is documented where it first
// appears: only its key is walked.
func structKeys(t *testing.T, typ reflect.Type) keySet {
	w := keyWalker{t: t, keys: keySet{}, seen: map[reflect.Type]bool{}}
	w.children("", typ)
	return w.keys
}

type keyWalker struct {
	t    *testing.T
	keys keySet
	seen map[reflect.Type]bool
}

var unmarshaler = reflect.TypeFor[yaml.Unmarshaler]()

// key records the key at path, of type typ, and walks what is below it.
func (w *keyWalker) key(path string, typ reflect.Type) {
	typ = deref(typ)
	_, self := selfDecoded[typ]
	w.keys[path] = typ.Kind() != reflect.Struct || self
	if !hasKeys(typ) {
		return
	}
	if _, ok := w.seen[typ]; ok {
		w.keys[path] = true // its keys are documented where the type first appears
		return
	}
	w.seen[typ] = true
	w.children(path, typ)
}

// children walks the keys below path, whose value is of type typ.
func (w *keyWalker) children(path string, typ reflect.Type) {
	typ = deref(typ)
	if s, ok := selfDecoded[typ]; ok {
		w.selfDecodedKeys(path, typ, s)
		return
	}
	switch typ.Kind() {
	case reflect.Struct:
		if reflect.PointerTo(typ).Implements(unmarshaler) && !tagged(typ) {
			w.t.Errorf("%v decodes itself (UnmarshalYAML) from keys no yaml tag names: add its shape to selfDecoded", typ)
			return
		}
		for i := range typ.NumField() {
			f := typ.Field(i)
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
			w.key(joinKey(path, name), f.Type)
		}
	case reflect.Slice:
		w.children(path+"[]", typ.Elem())
	case reflect.Map:
		w.children(path+".<>", typ.Elem())
	}
}

// selfShape is the YAML shape of a config type that decodes itself (UnmarshalYAML)
// from keys no yaml tag names.
type selfShape struct {
	item    reflect.Type // the struct one item decodes into
	mapping bool         // items are the values of a mapping (`<name>: {...}`); else the value is one item
	notKeys []string     // fields of item that no key of its own fills
}

// selfDecoded are the config types that decode themselves. Every exported field of the
// item but notKeys is a key, its name in snake case, and the decoder must fill that
// field from that key (checked): a field added to one of them is a key to document.
var selfDecoded = map[reflect.Type]selfShape{
	// output_fields: {<field>: {type, suffix, values}}; Field is the mapping's key.
	reflect.TypeFor[config.OutputFields](): {item: reflect.TypeFor[config.OutputField](), mapping: true, notKeys: []string{"Field"}},
	// Open mappings: any other key goes to Extra, for templates.
	reflect.TypeFor[config.CaseStudy](): {item: reflect.TypeFor[config.CaseStudy](), notKeys: []string{"Extra"}},
	reflect.TypeFor[config.Criterion](): {item: reflect.TypeFor[config.Criterion](), notKeys: []string{"Extra"}},
}

func (w *keyWalker) selfDecodedKeys(path string, typ reflect.Type, s selfShape) {
	if s.mapping {
		path += ".<>"
	}
	for i := range s.item.NumField() {
		f := s.item.Field(i)
		if !f.IsExported() || slices.Contains(s.notKeys, f.Name) {
			continue
		}
		key := snake(f.Name)
		var probe any = "probe"
		if f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.String {
			probe = []string{"probe"}
		} else if f.Type.Kind() != reflect.String {
			w.t.Errorf("%v.%s: teach the probe of selfDecoded a value of type %v", s.item, f.Name, f.Type)
			continue
		}
		var src any = map[string]any{key: probe}
		if s.mapping {
			src = map[string]any{"f": src}
		}
		b, _ := yaml.Marshal(src)
		v := reflect.New(typ)
		if err := yaml.Unmarshal(b, v.Interface()); err != nil {
			w.t.Errorf("%v: decoding %q: %v", typ, b, err)
			continue
		}
		item := v.Elem()
		if s.mapping {
			item = item.Index(0)
		}
		if !reflect.DeepEqual(item.Field(i).Interface(), probe) {
			w.t.Errorf("%v: key %q does not fill field %s (%q decoded to %+v): fix selfDecoded", typ, key, f.Name, b, item.Interface())
			continue
		}
		w.key(joinKey(path, key), f.Type)
	}
}

// hasKeys says whether a value of type typ has keys below it.
func hasKeys(typ reflect.Type) bool {
	typ = deref(typ)
	if _, ok := selfDecoded[typ]; ok {
		return true
	}
	switch typ.Kind() {
	case reflect.Struct:
		return true
	case reflect.Slice, reflect.Map:
		return hasKeys(typ.Elem())
	}
	return false
}

func deref(typ reflect.Type) reflect.Type {
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	return typ
}

func tagged(typ reflect.Type) bool {
	for i := range typ.NumField() {
		if _, ok := typ.Field(i).Tag.Lookup("yaml"); ok {
			return true
		}
	}
	return false
}

// snake is a Go field name in snake case: InputFields, input_fields.
func snake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// limitsKeys reads the keys of the limits file from the struct it is decoded into, type
// file of internal/provision (with yaml.v3's KnownFields: no other key is accepted).
// The type is unexported, so its source is read, not reflected: a field's yaml tag
// names its key, a struct of the package is walked below its key, a mapping's values
// below `key.<>`.
func limitsKeys(t *testing.T) keySet {
	dir := filepath.Join(root, "internal/provision")
	fset := token.NewFileSet()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	structs := map[string]*ast.StructType{}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, e.Name()), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if ts, ok := n.(*ast.TypeSpec); ok {
				if st, ok := ts.Type.(*ast.StructType); ok {
					structs[ts.Name.Name] = st
				}
			}
			return true
		})
	}
	top, ok := structs["file"]
	if !ok {
		t.Fatal("internal/provision has no type file (the YAML form of the limits): update limitsKeys")
	}
	keys := keySet{}
	var walk func(path string, st *ast.StructType)
	var key func(path string, typ ast.Expr)
	key = func(path string, typ ast.Expr) {
		switch x := typ.(type) {
		case *ast.StarExpr:
			key(path, x.X)
		case *ast.Ident:
			st, isStruct := structs[x.Name]
			keys[path] = !isStruct
			if isStruct {
				walk(path, st)
			}
		case *ast.MapType:
			keys[path] = true
			if id, ok := x.Value.(*ast.Ident); ok && structs[id.Name] != nil {
				walk(path+".<>", structs[id.Name])
			}
		default:
			keys[path] = true
		}
	}
	walk = func(path string, st *ast.StructType) {
		for _, f := range st.Fields.List {
			if f.Tag == nil {
				t.Errorf("internal/provision: a field of %s has no yaml tag: update limitsKeys", path)
				continue
			}
			tag, _ := strconv.Unquote(f.Tag.Value)
			name, _, _ := strings.Cut(reflect.StructTag(tag).Get("yaml"), ",")
			if name == "-" || name == "" {
				continue
			}
			key(joinKey(path, name), f.Type)
		}
	}
	walk("", top)
	return keys
}

func joinKey(prefix, key string) string {
	if prefix == "" || strings.HasPrefix(key, "[]") {
		return prefix + key
	}
	return prefix + "." + key
}

var placeholder = regexp.MustCompile(`<[^>]*>`)

// normalizeKey writes every <name> placeholder as <>.
func normalizeKey(k string) string { return placeholder.ReplaceAllString(k, "<>") }

// displayKey writes a key of the code the way the docs do (<name> for a mapping's key).
func displayKey(k string) string { return strings.ReplaceAll(k, "<>", "<name>") }

// parentPaths are path and the keys above it: deployments.<alias> is deployments.<alias>
// and deployments.
func parentPaths(path string) []string {
	var out []string
	for path != "" {
		out = append(out, path)
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// flagDocs says where docs/OPERATIONS.md documents the flags of each command of cmd/:
// the `| flag |` table of its section (mqctl: the global flags there, and its commands'
// flags in the `| command | flag |` table), or the flags its section names when it has
// no table (llmsim). The flags several commands share are documented once: the
// connection flags (the `| flag | env |` table of "Connection flags", for every command
// with --nats) and --version (every binary's, "Processes").
var flagDocs = map[string]struct {
	help    []string // the arguments that print its flags
	section string
}{
	"producer":   {[]string{"-h"}, "### producer"},
	"worker":     {[]string{"-h"}, "### worker"},
	"collector":  {[]string{"-h"}, "### collector"},
	"llmsim":     {[]string{"-h"}, "### llmsim"},
	"multiquery": {[]string{"run", "-h"}, "## Local mode (multiquery run)"},
	"mqctl":      {[]string{"-h"}, "### mqctl"},
}

// devTools are the development commands of cmd/: their -h and docs/BENCHMARKS.md
// document them, not the operations reference.
var devTools = []string{"mqbench", "mqchaos"}

const connectionSection = "### Connection flags"

// Every flag of every command is documented, both ways: each flag a command registers
// (as its -h lists them: the real flag sets, run; mqctl's commands run against a NATS
// server, since they parse their flags once connected) has a row in docs/OPERATIONS.md
// where flagDocs says, and every documented flag is one the command has, in the tables
// and wherever README.md, docs/OPERATIONS.md, docs/WIRE.md and deploy/README.md name a
// command with flags in the text (`collector --store-results=false`). The environment
// variable a flag reads (its -h says "env NAME": natsconn and proc build that from the
// names they read) is the one its row gives (the env column, or `$NAME` in its default),
// and a row gives no variable the flag does not read.
func TestOperationsDocumentsEveryFlag(t *testing.T) {
	bin := buildBinaries(t)
	doc := readDoc(t, operations)

	cmds, err := os.ReadDir(filepath.Join(root, "cmd"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cmds {
		if _, ok := flagDocs[c.Name()]; c.IsDir() && !ok && !slices.Contains(devTools, c.Name()) {
			t.Errorf("cmd/%s: a command whose flags this test does not look for: add it to flagDocs (or devTools)", c.Name())
		}
	}
	help := map[string]flagHelp{}
	for name, fd := range flagDocs {
		help[name] = parseHelp(runHelp(t, filepath.Join(bin, name), fd.help...), "")
		if len(help[name]) == 0 {
			t.Fatalf("%s %s lists no flags", name, strings.Join(fd.help, " "))
		}
	}
	conn := checkConnectionFlags(t, doc, help)
	for _, name := range sortedKeys(flagDocs) {
		checkCommandFlags(t, doc, name, help[name], conn)
	}
	mqctl := mqctlCommandFlags(t, filepath.Join(bin, "mqctl"), startNATS(t, bin))
	checkMQCtlCommandFlags(t, doc, mqctl)
	checkInlineCommands(t, help, mqctl)
}

// checkConnectionFlags checks the table of the flags every command that connects shares:
// it names those commands (the commands with --nats), and each of its flags is a flag of
// each of them, reading the variable its row gives. It returns the table's flags.
func checkConnectionFlags(t *testing.T, doc *document, help map[string]flagHelp) map[string]bool {
	t.Helper()
	rows := doc.flagRows(connectionSection)
	if len(rows) == 0 {
		t.Fatalf("%s: no flag table in %q", operations, connectionSection)
	}
	var connecting []string
	for _, name := range sortedKeys(help) {
		if _, ok := help[name]["nats"]; ok {
			connecting = append(connecting, name)
		}
	}
	intro := regexp.MustCompile(`Every command that connects \(([^)]*)\)`).FindStringSubmatch(doc.sectionText(connectionSection))
	if intro == nil {
		t.Errorf("%s: %q does not say which commands take the connection flags (\"Every command that connects (...)\")", operations, connectionSection)
	} else if listed := slices.Sorted(slices.Values(codeSpans(intro[1]))); !slices.Equal(listed, connecting) {
		t.Errorf("%s: %q says the commands that connect are %v; the commands with --nats are %v", operations, connectionSection, listed, connecting)
	}
	flags := map[string]bool{}
	for _, r := range rows {
		flags[r.flag] = true
		var lacking []string
		for _, name := range connecting {
			usage, ok := help[name][r.flag]
			if !ok {
				lacking = append(lacking, name)
				continue
			}
			checkEnv(t, name, r, usage)
		}
		if len(lacking) > 0 {
			t.Errorf("%s:%d: --%s is documented for every command that connects, but %v have no such flag", operations, r.line, r.flag, lacking)
		}
	}
	return flags
}

// checkCommandFlags checks the flags of command name (code, its -h) against where
// flagDocs says they are documented; conn are the connection flags (checked already).
func checkCommandFlags(t *testing.T, doc *document, name string, code flagHelp, conn map[string]bool) {
	t.Helper()
	fd := flagDocs[name]
	documented := map[string]bool{}
	if _, ok := code["nats"]; ok {
		documented = maps.Clone(conn)
	}
	if name != "mqctl" { // its section documents its commands' flags
		rows := doc.flagRows(fd.section)
		if len(rows) == 0 {
			rows = doc.proseFlags(fd.section)
		}
		if len(rows) == 0 {
			t.Errorf("%s: section %q documents no flag of %s", operations, fd.section, name)
		}
		for _, r := range rows {
			usage, ok := code[r.flag]
			if !ok {
				t.Errorf("%s:%d: --%s is documented for %s, which has no such flag", operations, r.line, r.flag, name)
				continue
			}
			documented[r.flag] = true
			checkEnv(t, name, r, usage)
		}
	}
	versionDocumented := strings.Contains(strings.Join(strings.Fields(doc.text), " "), "Every binary prints its build with `--version`")
	for _, f := range sortedKeys(code) {
		if !documented[f] && !(f == "version" && versionDocumented) {
			where := strconv.Quote(fd.section)
			if _, ok := code["nats"]; ok {
				where += " or " + strconv.Quote(connectionSection)
			}
			t.Errorf("%s: %s has flag --%s (%q), which is not documented (in %s)", operations, name, f, code[f], where)
		}
	}
}

// checkMQCtlCommandFlags checks the `| command | flag |` table of mqctl's section
// against the flags each command parses (real).
func checkMQCtlCommandFlags(t *testing.T, doc *document, real map[string]map[string]bool) {
	t.Helper()
	section := flagDocs["mqctl"].section
	documented := map[string]map[string]bool{}
	for _, tb := range doc.tables {
		if tb.section != section || len(tb.header) < 2 || tb.header[0] != "command" || tb.header[1] != "flag" {
			continue
		}
		for _, r := range tb.rows {
			cmd := commandWords(strings.Join(codeSpans(r.cells[0]), " "))
			if real[cmd] == nil {
				t.Errorf("%s:%d: mqctl has no command %q", operations, r.line, cmd)
				continue
			}
			for _, f := range codeSpans(r.cells[1]) {
				name, _ := flagName(f)
				if !real[cmd][name] {
					t.Errorf("%s:%d: --%s is documented for mqctl %s, which has no such flag", operations, r.line, name, cmd)
				}
				if documented[cmd] == nil {
					documented[cmd] = map[string]bool{}
				}
				documented[cmd][name] = true
			}
		}
	}
	for _, cmd := range sortedKeys(real) {
		for _, f := range sortedKeys(real[cmd]) {
			if !documented[cmd][f] {
				t.Errorf("%s: mqctl %s has flag --%s, which has no row in the `| command | flag |` table of %q", operations, cmd, f, section)
			}
		}
	}
}

// checkInlineCommands checks the commands the documents name with flags in their text
// (`collector --store-results=false`, `mqctl status RUN [--watch]`): each flag is one
// the command has (-h, every command's, aside).
func checkInlineCommands(t *testing.T, help map[string]flagHelp, mqctl map[string]map[string]bool) {
	t.Helper()
	for _, d := range documents {
		text := readDoc(t, d).textOutsideBlocks()
		for _, m := range inlineCommand.FindAllStringSubmatchIndex(text, -1) {
			span := text[m[2]:m[3]]
			where := fmt.Sprintf("%s:%d: `%s`", d, strings.Count(text[:m[0]], "\n")+1, span)
			var args []string
			for _, a := range strings.Fields(span) {
				if a = strings.Trim(a, "[]"); a != "-h" && a != "--help" {
					args = append(args, a)
				}
			}
			prog := strings.TrimPrefix(args[0], "bin/")
			switch {
			case prog == "mqctl":
				if len(args) > 1 {
					checkMQCtl(t, where, args[1:], flagSet(help["mqctl"]), mqctl)
				}
			case prog == "multiquery": // multiquery run
				checkFlags(t, where, prog, args[2:], help[prog])
			default:
				checkFlags(t, where, prog, args[1:], help[prog])
			}
		}
	}
}

// inlineCommand is an inline code span that runs a command with a flag.
var inlineCommand = regexp.MustCompile("`((?:bin/)?(?:producer|worker|collector|llmsim|mqctl|multiquery run)\\b[^`]*\\s-[^`]*)`")

func checkFlags(t *testing.T, where, prog string, args []string, known flagHelp) {
	t.Helper()
	for _, a := range args {
		if f, ok := flagName(a); ok {
			if _, ok := known[f]; !ok {
				t.Errorf("%s: %s has no flag --%s", where, prog, f)
			}
		}
	}
}

var envOfUsage = regexp.MustCompile(`\benv ([A-Z][A-Z0-9_]*)`)

// checkEnv checks the environment variable of a documented flag of command name: the
// one its -h names is the one its row gives, and the row gives no other.
func checkEnv(t *testing.T, name string, r flagRow, usage string) {
	t.Helper()
	var code []string
	for _, m := range envOfUsage.FindAllStringSubmatch(usage, -1) {
		code = append(code, m[1])
	}
	slices.Sort(code)
	if doc := slices.Sorted(slices.Values(r.env)); !slices.Equal(code, doc) {
		t.Errorf("%s:%d: --%s of %s reads the environment variable(s) %v (its -h), the row gives %v", operations, r.line, r.flag, name, code, doc)
	}
}

// flagHelp maps each flag of a command to its usage, as its -h prints them.
type flagHelp map[string]string

func flagSet(h flagHelp) map[string]bool {
	m := map[string]bool{}
	for f := range h {
		m[f] = true
	}
	return m
}

// parseHelp reads the flags Go's flag package prints (PrintDefaults: "  -name type" then
// the usage indented by a tab), after the line "Usage of <after>:" when after is set.
func parseHelp(out, after string) flagHelp {
	if after != "" {
		i := strings.Index(out, "Usage of "+after+":\n")
		if i < 0 {
			return nil
		}
		out = out[i:]
	}
	h := flagHelp{}
	last := ""
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(l, "  -"):
			head, usage, _ := strings.Cut(l[3:], "\t")
			last = strings.Fields(head)[0]
			h[last] = strings.TrimSpace(usage)
		case strings.HasPrefix(l, "    \t") && last != "":
			h[last] = strings.TrimSpace(h[last] + " " + strings.TrimSpace(l))
		case after != "" && strings.HasPrefix(l, "Usage of ") && len(h) > 0:
			return h
		default:
			last = ""
		}
	}
	return h
}

// runHelp runs exe with args in an environment without NATS or prefix variables (so
// nothing but the code sets a default) and returns what it prints; -h exits 0 or 2.
func runHelp(t *testing.T, exe string, args ...string) string {
	t.Helper()
	cmd := exec.Command(exe, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NATS_") && !strings.HasPrefix(kv, "MQ_PREFIX=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	out, _ := cmd.CombinedOutput()
	return string(out)
}

// startNATS starts the nats-server make build builds on a free loopback port, stopped
// at the end of the test, and returns its URL.
func startNATS(t *testing.T, bin string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(filepath.Join(bin, "nats-server"), "-a", "127.0.0.1", "-p", strconv.Itoa(port))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return fmt.Sprintf("nats://127.0.0.1:%d", port)
}

var (
	lowerWord    = regexp.MustCompile(`^[a-z]+$`)
	usageOperand = regexp.MustCompile(`^[A-Z]+(\.\.\.)?$`)
)

// mqctlCommandFlags returns the flags each mqctl command parses: every command its
// usage lists, run with -h after its operands on a live connection (a command parses its
// flags once connected); a command without a flag set of its own has none.
func mqctlCommandFlags(t *testing.T, exe, url string) map[string]map[string]bool {
	t.Helper()
	out := map[string]map[string]bool{}
	for _, l := range strings.Split(runHelp(t, exe, "-h"), "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(l), "mqctl [flags] ")
		if !ok {
			continue
		}
		// "status RUN [--watch]": the command's words, then its operands (a placeholder each).
		fields := strings.Fields(rest)
		var words, operands []string
		for len(fields) > 0 && lowerWord.MatchString(fields[0]) {
			words, fields = append(words, fields[0]), fields[1:]
		}
		for len(fields) > 0 && usageOperand.MatchString(fields[0]) {
			operands, fields = append(operands, "x"), fields[1:]
		}
		name := strings.Join(words, " ")
		if out[name] == nil {
			out[name] = map[string]bool{}
		}
		args := append([]string{"--nats", url}, words...)
		args = append(append(args, operands...), "-h")
		for f := range parseHelp(runHelp(t, exe, args...), name) {
			out[name][f] = true
		}
	}
	if len(out) < 5 {
		t.Fatalf("mqctl -h lists %d commands", len(out))
	}
	return out
}

// commandWords are the leading lower-case words of an mqctl command line ("status RUN"
// is status).
func commandWords(s string) string {
	var words []string
	for _, w := range strings.Fields(s) {
		if !lowerWord.MatchString(w) {
			break
		}
		words = append(words, w)
	}
	return strings.Join(words, " ")
}

// A document as these tests read it: its text, its headings and its tables.
type document struct {
	text     string
	lines    []string
	headings []heading
	tables   []table
}

type heading struct {
	text  string // "## Worker config"
	level int
	line  int // 1-based
}

type table struct {
	section string // the heading the table is under
	line    int
	header  []string
	prefix  string // "Keys of `deployments.<alias>`" before it: deployments.<alias>
	rows    []tableRow
}

type tableRow struct {
	line  int
	cells []string
}

var keysOf = regexp.MustCompile("Keys of `([^`]+)`")

// readDoc reads a document of the repository: its headings (outside code blocks) and
// its tables, each under the nearest heading above it.
func readDoc(t *testing.T, path string) *document {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, path))
	if err != nil {
		t.Fatal(err)
	}
	d := &document{text: string(b), lines: strings.Split(string(b), "\n")}
	inBlock := false
	section := ""
	for i := 0; i < len(d.lines); i++ {
		l := d.lines[i]
		if strings.HasPrefix(l, "```") {
			inBlock = !inBlock
			continue
		}
		if inBlock {
			continue
		}
		if m := regexp.MustCompile(`^(#+) `).FindStringSubmatch(l); m != nil {
			d.headings = append(d.headings, heading{text: l, level: len(m[1]), line: i + 1})
			section = l
			continue
		}
		if !strings.HasPrefix(l, "|") || i+1 >= len(d.lines) || !regexp.MustCompile(`^\|[-|: ]+\|$`).MatchString(d.lines[i+1]) {
			continue
		}
		tb := table{section: section, line: i + 1, header: cells(l)}
		// The paragraph before the table may say whose keys it lists.
		j := i - 1
		for j >= 0 && strings.TrimSpace(d.lines[j]) == "" {
			j--
		}
		var para []string
		for ; j >= 0 && strings.TrimSpace(d.lines[j]) != ""; j-- {
			para = append([]string{d.lines[j]}, para...)
		}
		if m := keysOf.FindStringSubmatch(strings.Join(para, " ")); m != nil {
			tb.prefix = m[1]
		}
		for i += 2; i < len(d.lines) && strings.HasPrefix(d.lines[i], "|"); i++ {
			tb.rows = append(tb.rows, tableRow{line: i + 1, cells: cells(d.lines[i])})
		}
		i--
		d.tables = append(d.tables, tb)
	}
	return d
}

// cells splits a table row into its cells (an escaped \| stays in its cell).
func cells(row string) []string {
	row = strings.ReplaceAll(strings.TrimSpace(row), `\|`, "\x00")
	row = strings.TrimSuffix(strings.TrimPrefix(row, "|"), "|")
	var out []string
	for _, c := range strings.Split(row, "|") {
		out = append(out, strings.TrimSpace(strings.ReplaceAll(c, "\x00", "|")))
	}
	return out
}

var codeSpan = regexp.MustCompile("`([^`]+)`")

// codeSpans are the inline code spans of s, without their backquotes.
func codeSpans(s string) []string {
	var out []string
	for _, m := range codeSpan.FindAllStringSubmatch(s, -1) {
		out = append(out, m[1])
	}
	return out
}

// sectionText is the text of a section: from its heading to the next heading of the
// same or a higher level.
func (d *document) sectionText(h string) string {
	for i, hd := range d.headings {
		if hd.text != h {
			continue
		}
		end := len(d.lines)
		for _, next := range d.headings[i+1:] {
			if next.level <= hd.level {
				end = next.line - 1
				break
			}
		}
		return strings.Join(d.lines[hd.line-1:end], "\n")
	}
	return ""
}

// textOutsideBlocks is the document with its fenced code blocks blanked (lines kept).
func (d *document) textOutsideBlocks() string {
	out := make([]string, len(d.lines))
	inBlock := false
	for i, l := range d.lines {
		if strings.HasPrefix(l, "```") {
			inBlock = !inBlock
			continue
		}
		if !inBlock {
			out[i] = l
		}
	}
	return strings.Join(out, "\n")
}

// flagRow is one documented flag: where, and the environment variables its row gives.
type flagRow struct {
	flag string
	line int
	env  []string
}

var envInDefault = regexp.MustCompile(`\$([A-Z][A-Z0-9_]*)`)

// flagRows are the flags of the `| flag |` tables directly under section h: each flag
// of a row's first cell (`--nats-user`, `--nats-password`), with the variable of the
// same rank in its env column, or the $VARIABLE its default names.
func (d *document) flagRows(h string) []flagRow {
	var out []flagRow
	for _, tb := range d.tables {
		if tb.section != h || tb.header[0] != "flag" {
			continue
		}
		envCol, defCol := slices.Index(tb.header, "env"), slices.Index(tb.header, "default")
		for _, r := range tb.rows {
			var envs []string
			if envCol > 0 && envCol < len(r.cells) {
				envs = codeSpans(r.cells[envCol])
			}
			for i, f := range codeSpans(r.cells[0]) {
				name, ok := flagName(f)
				if !ok {
					continue
				}
				fr := flagRow{flag: name, line: r.line}
				switch {
				case envCol > 0 && i < len(envs):
					fr.env = []string{envs[i]}
				case defCol > 0 && defCol < len(r.cells):
					for _, m := range envInDefault.FindAllStringSubmatch(r.cells[defCol], -1) {
						fr.env = append(fr.env, m[1])
					}
				}
				out = append(out, fr)
			}
		}
	}
	return out
}

// proseFlags are the flags a section without a flag table names in its text (`--addr`,
// `--fault KIND=PCT`).
func (d *document) proseFlags(h string) []flagRow {
	var out []flagRow
	text := d.sectionText(h)
	start := 0
	for _, hd := range d.headings {
		if hd.text == h {
			start = hd.line
		}
	}
	for _, m := range codeSpan.FindAllStringSubmatchIndex(text, -1) {
		span := text[m[2]:m[3]]
		if !strings.HasPrefix(span, "-") {
			continue
		}
		if name, ok := flagName(strings.Fields(span)[0]); ok {
			out = append(out, flagRow{flag: name, line: start + strings.Count(text[:m[0]], "\n")})
		}
	}
	return out
}
