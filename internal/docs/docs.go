// Package docs reads the repository's Markdown documents the way the tests that keep
// them true need it: their code blocks (fenced, or indented by four spaces), and the
// shell commands in a block as argument lists, quoted and expanded as a POSIX shell
// would. The tests of this package check every command the README and docs/ show
// (binaries, flags, make targets, repository paths); internal/e2e runs the wire
// contract's worked example (docs/WIRE.md) against a real pipeline.
package docs

import (
	"regexp"
	"strings"
)

// Block is one code block of a Markdown document.
type Block struct {
	Lang string // the fence's info string; "" for an unlabelled fence, "indented" for an indented block
	Line int    // the 1-based line of its first line of code
	Text string
}

// Blocks returns the code blocks of a Markdown document in order: fenced blocks
// (``` with an optional language) and blocks indented by four spaces after a blank
// line (outside lists: a line indented in a list item is not one).
func Blocks(markdown string) []Block {
	var out []Block
	lines := strings.Split(markdown, "\n")
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if lang, ok := strings.CutPrefix(l, "```"); ok {
			b := Block{Lang: strings.TrimSpace(lang), Line: i + 2}
			var text []string
			for i++; i < len(lines) && !strings.HasPrefix(lines[i], "```"); i++ {
				text = append(text, lines[i])
			}
			b.Text = strings.Join(text, "\n")
			out = append(out, b)
			continue
		}
		if strings.HasPrefix(l, "    ") && strings.TrimSpace(l) != "" && i > 0 && strings.TrimSpace(lines[i-1]) == "" && !inList(lines, i) {
			b := Block{Lang: "indented", Line: i + 1}
			var text []string
			for ; i < len(lines) && (strings.HasPrefix(lines[i], "    ") || strings.TrimSpace(lines[i]) == ""); i++ {
				text = append(text, strings.TrimPrefix(lines[i], "    "))
			}
			b.Text = strings.TrimRight(strings.Join(text, "\n"), "\n")
			out = append(out, b)
			i-- // the line that ended the block is looked at again
		}
	}
	return out
}

var listItem = regexp.MustCompile(`^\s*([-*+]|\d+\.)\s`)

// inList reports whether line i follows a list item in the same paragraph run (an
// indented continuation, not a code block).
func inList(lines []string, i int) bool {
	for j := i - 1; j >= 0; j-- {
		if strings.TrimSpace(lines[j]) == "" {
			continue
		}
		return listItem.MatchString(lines[j]) || strings.HasPrefix(lines[j], "  ")
	}
	return false
}

// Command is one simple command of a shell block.
type Command struct {
	Line int               // the 1-based line of the block it starts on
	Env  map[string]string // assignments before the program (X=y cmd)
	Args []string          // the program and its arguments, quotes removed, variables expanded
}

// Commands splits a shell block into simple commands: lines continued with a
// backslash are joined, comments dropped, and &&, ||, ;, | and & separate commands.
// Words are unquoted ('...' literal, "..." with $VAR, ${VAR} and backslash escapes)
// and $VAR expanded from env, to which assignments (RUN=x, export X=y) are added as the
// block goes. A command of assignments only, or export, is applied, not returned.
func Commands(block string, env map[string]string) []Command {
	vars := map[string]string{}
	for k, v := range env {
		vars[k] = v
	}
	var out []Command
	lines := strings.Split(block, "\n")
	for i := 0; i < len(lines); i++ {
		start, l := i+1, lines[i]
		for strings.HasSuffix(l, "\\") && i+1 < len(lines) {
			i++
			l = l[:len(l)-1] + lines[i]
		}
		for _, words := range splitLine(l, vars) {
			if c, ok := command(words, vars); ok {
				c.Line = start
				out = append(out, c)
			}
		}
	}
	return out
}

var assignment = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)

// command makes a command of words, applying assignments and export to vars.
func command(words []string, vars map[string]string) (Command, bool) {
	if len(words) == 0 {
		return Command{}, false
	}
	if words[0] == "export" {
		words = words[1:]
		for _, w := range words {
			if k, v, ok := strings.Cut(w, "="); ok {
				vars[k] = v
			}
		}
		return Command{}, false
	}
	c := Command{Env: map[string]string{}}
	for len(words) > 0 && assignment.MatchString(words[0]) {
		k, v, _ := strings.Cut(words[0], "=")
		c.Env[k] = v
		words = words[1:]
	}
	if len(words) == 0 {
		for k, v := range c.Env {
			vars[k] = v
		}
		return Command{}, false
	}
	c.Args = words
	return c, true
}

// splitLine splits one (joined) line into the words of each command on it.
func splitLine(l string, vars map[string]string) [][]string {
	var (
		cmds  [][]string
		words []string
		cur   strings.Builder
		inW   bool // a word is being built (even an empty quoted one)
	)
	endWord := func() {
		if inW {
			words = append(words, cur.String())
			cur.Reset()
			inW = false
		}
	}
	endCmd := func() {
		endWord()
		if len(words) > 0 {
			cmds = append(cmds, words)
		}
		words = nil
	}
	rs := []rune(l)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case r == '\'':
			inW = true
			for i++; i < len(rs) && rs[i] != '\''; i++ {
				cur.WriteRune(rs[i])
			}
		case r == '"':
			inW = true
			for i++; i < len(rs) && rs[i] != '"'; i++ {
				switch {
				case rs[i] == '\\' && i+1 < len(rs) && strings.ContainsRune("\"\\$`", rs[i+1]):
					i++
					cur.WriteRune(rs[i])
				case rs[i] == '$':
					i = expand(rs, i, vars, &cur)
				default:
					cur.WriteRune(rs[i])
				}
			}
		case r == '\\' && i+1 < len(rs):
			inW = true
			i++
			cur.WriteRune(rs[i])
		case r == '$':
			inW = true
			i = expand(rs, i, vars, &cur)
		case r == '#' && !inW:
			endCmd()
			return cmds
		case r == ' ' || r == '\t':
			endWord()
		case r == ';' || r == '|' || r == '&':
			if i+1 < len(rs) && (rs[i+1] == '&' || rs[i+1] == '|') && r != ';' {
				i++
			}
			endCmd()
		default:
			inW = true
			cur.WriteRune(r)
		}
	}
	endCmd()
	return cmds
}

var varName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*`)

// expand writes the value of the variable at rs[i] ('$') and returns the index of its
// last rune; a '$' that starts no variable is written as is.
func expand(rs []rune, i int, vars map[string]string, b *strings.Builder) int {
	rest := string(rs[i+1:])
	if strings.HasPrefix(rest, "{") {
		if end := strings.IndexByte(rest, '}'); end > 0 {
			name, def, _ := strings.Cut(rest[1:end], ":-")
			if v := vars[name]; v != "" {
				def = v
			}
			b.WriteString(def)
			return i + 1 + len([]rune(rest[:end+1])) - 1
		}
	}
	name := varName.FindString(rest)
	if name == "" {
		b.WriteRune('$')
		return i
	}
	b.WriteString(vars[name])
	return i + len(name)
}
