// Package prompt owns prompt templates: Jinja2 source compiled with gonja v2 and
// rendered over a row.
//
// Templates are strict: a reference to a variable, attribute or item that does not
// exist is an error at render time (an *UndefinedError naming it), never an empty
// string silently sent to the model. The `default` filter and the `defined` /
// `undefined` tests still work on missing values, as in Jinja2's StrictUndefined.
// Autoescaping is off: prompts are plain text, not HTML.
//
// Includes, imports and template inheritance are not supported: a template is one
// self-contained source.
package prompt

import (
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"github.com/nikolalohinski/gonja/v2/builtins"
	gonjaconfig "github.com/nikolalohinski/gonja/v2/config"
	"github.com/nikolalohinski/gonja/v2/exec"
	"github.com/nikolalohinski/gonja/v2/loaders"
	"github.com/nikolalohinski/gonja/v2/parser"
	"github.com/nikolalohinski/gonja/v2/tokens"
)

// Template is a compiled Jinja2 template. It is immutable and safe for concurrent
// use by multiple goroutines.
type Template struct {
	name string
	src  string
	tpl  *exec.Template
}

// Compile parses src as a Jinja2 template. name identifies the template in errors;
// a syntax error or an unknown filter is returned as a *CompileError.
func Compile(name, src string) (t *Template, err error) {
	defer func() {
		// gonja's parser panics on some malformed input; that is a syntax error.
		if r := recover(); r != nil {
			t, err = nil, &CompileError{Template: name, Err: fmt.Errorf("parse: %v", r)}
		}
	}()
	// A fresh config and environment per template: gonja's package-level defaults
	// are shared and mutable, and must not be changed by this package.
	cfg := gonjaconfig.New()
	cfg.StrictUndefined = true
	cfg.AutoEscape = false

	env := &exec.Environment{
		Context:           exec.EmptyContext().Update(builtins.GlobalFunctions).Update(builtins.GlobalVariables),
		Filters:           builtins.Filters,
		Tests:             builtins.Tests,
		ControlStructures: builtins.ControlStructures,
		Methods:           builtins.Methods,
	}

	tpl, err := exec.NewTemplate(name, cfg, singleLoader{name: name, src: src}, env)
	if err != nil {
		return nil, newCompileError(name, err)
	}
	if err := checkFilters(name, src, cfg, env.Filters); err != nil {
		return nil, err
	}
	return &Template{name: name, src: src, tpl: tpl}, nil
}

// Name returns the name the template was compiled with.
func (t *Template) Name() string { return t.name }

// Source returns the template's source text.
func (t *Template) Source() string { return t.src }

// Render executes the template with ctx as its top-level variables (for example
// "row" and "lookup"). ctx is only read. A reference to anything undefined returns
// an *UndefinedError; other failures (a bad filter argument, a type error, a panic
// inside gonja) are returned wrapped with the template's name.
func (t *Template) Render(ctx map[string]any) (s string, err error) {
	defer func() {
		if r := recover(); r != nil {
			s, err = "", fmt.Errorf("render template %q: panic: %v", t.name, r)
		}
	}()
	out, err := t.tpl.ExecuteToString(exec.NewContext(ctx))
	if err != nil {
		if uerr := parseUndefined(t.name, err); uerr != nil {
			return "", uerr
		}
		return "", fmt.Errorf("render template %q: %w", t.name, err)
	}
	return out, nil
}

// UndefinedError reports a template reference to a variable, attribute or item
// that does not exist in the render context.
type UndefinedError struct {
	// Template is the name of the template.
	Template string
	// Var is the reference as written in the template, e.g. "row.input_2",
	// "row.source_row.title" or `row['a b']`.
	Var string
	// Line is the template line of the failing expression or statement, 0 if unknown.
	Line int
}

func (e *UndefinedError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("template %q line %d: undefined variable %q", e.Template, e.Line, e.Var)
	}
	return fmt.Sprintf("template %q: undefined variable %q", e.Template, e.Var)
}

// CompileError reports a template that does not parse.
type CompileError struct {
	// Template is the name of the template.
	Template string
	// Line and Column locate the error when gonja reports it, else 0.
	Line, Column int
	// Err is gonja's error.
	Err error
}

func (e *CompileError) Error() string {
	if e.Line <= 0 {
		return fmt.Sprintf("template %q: %v", e.Template, e.Err)
	}
	msg := e.Err.Error()
	var se *parser.SyntaxError
	if errors.As(e.Err, &se) {
		// SyntaxError.Error appends its own position; say it once.
		msg = strings.TrimSpace(se.Message)
		if se.Raw != "" {
			msg += fmt.Sprintf(" (near %q)", se.Raw)
		}
	}
	return fmt.Sprintf("template %q line %d col %d: %s", e.Template, e.Line, e.Column, msg)
}

func (e *CompileError) Unwrap() error { return e.Err }

func newCompileError(name string, err error) *CompileError {
	// exec.NewTemplate wraps the parser's error in a message that quotes the whole
	// template source; keep only the parser's own error.
	inner := err
	if u := errors.Unwrap(err); u != nil {
		inner = u
	}
	ce := &CompileError{Template: name, Err: inner}
	var se *parser.SyntaxError
	if errors.As(inner, &se) {
		ce.Line, ce.Column = se.Line, se.Column
	}
	return ce
}

// gonja v2.9.1 has no typed error for undefined references: the evaluator builds
// these messages (exec/evaluator.go), and the renderer wraps them with the line of
// the failing expression or statement.
var (
	undefinedName = regexp.MustCompile(`Unable to evaluate name "([^"]*)"`)
	// The captured reference cannot contain ':', which keeps the match off the
	// wrapping messages ("Unable to evaluate target row.x: ...").
	undefinedAttr = regexp.MustCompile(`[Uu]nable to evaluate ([^:]+): (?:attribute '[^']*'|item .*?) not found`)
	renderLine    = regexp.MustCompile(`at line (\d+)`)
)

func parseUndefined(name string, err error) *UndefinedError {
	msg := err.Error()
	// Wrapping messages come first: the innermost cause is the last match.
	v, at := "", -1
	for _, re := range []*regexp.Regexp{undefinedName, undefinedAttr} {
		if m := re.FindAllStringSubmatchIndex(msg, -1); m != nil {
			if last := m[len(m)-1]; last[0] > at {
				v, at = msg[last[2]:last[3]], last[0]
			}
		}
	}
	if at < 0 {
		return nil
	}
	ue := &UndefinedError{Template: name, Var: v}
	if m := renderLine.FindAllStringSubmatch(msg[:at], -1); m != nil {
		// The innermost statement before the cause is the most precise line.
		ue.Line, _ = strconv.Atoi(m[len(m)-1][1])
	}
	return ue
}

// checkFilters reports an unknown filter at compile time: gonja only finds it when
// the expression is rendered, which would fail every row instead of the config.
func checkFilters(name, src string, cfg *gonjaconfig.Config, filters *exec.FilterSet) error {
	s := tokens.LexAll(src, cfg)
	for !s.End() {
		tok := s.Next()
		if tok.Type != tokens.Pipe {
			continue
		}
		if f := s.Current(); f != nil && f.Type == tokens.Name && !filters.Exists(f.Val) {
			return &CompileError{
				Template: name, Line: f.Line, Column: f.Col,
				Err: fmt.Errorf("unknown filter %q", f.Val),
			}
		}
	}
	return nil
}

// singleLoader serves one template source under its own name; anything else
// (include, import, extends) is not found.
type singleLoader struct {
	name string
	src  string
}

func (l singleLoader) Read(path string) (io.Reader, error) {
	if path != l.name {
		return nil, fmt.Errorf("template %q not found: includes are not supported", path)
	}
	return strings.NewReader(l.src), nil
}

func (l singleLoader) Resolve(path string) (string, error) {
	if path != l.name {
		return "", fmt.Errorf("template %q not found: includes are not supported", path)
	}
	return path, nil
}

func (l singleLoader) Inherit(string) (loaders.Loader, error) { return l, nil }
