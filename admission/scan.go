package admission

import (
	"bytes"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"
)

// scanner reads the review's JSON for the hand decoders, validating as it
// goes exactly what jsontext validates by default (the grammar, UTF-8, no
// duplicate names in an object, the nesting limit), so that the fast path
// accepts and refuses what jsonv2 does (FuzzHandDecode). jsontext's
// Decoder, token by token, also kept a stack of names for its error
// messages and a state machine per token; reading the tokens here is a
// single pass over the bytes. A value the hand decoders do not read (a
// member they leave to jsonv2 or skip) is found by a quick scan and then
// checked by jsontext.Value.IsValid.
//
// Errors here only send the review to the general path, which reports the
// precise one.
type scanner struct {
	b []byte
	i int
	// depth counts the objects and arrays open around the cursor, for
	// jsontext's limit on the whole document.
	depth int
}

// maxDepth is jsontext's nesting limit (maxNestingDepth, unexported).
const maxDepth = 10000

var (
	errEnd      = errors.New("admission: JSON ends early")
	errSyntax   = errors.New("admission: invalid JSON")
	errDepth    = errors.New("admission: JSON nested too deep")
	errDupName  = errors.New("admission: duplicate name in a JSON object")
	errNotValue = errors.New("admission: want a JSON value")
)

// ws skips whitespace.
func (d *scanner) ws() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// PeekKind returns the kind of the next value as jsontext's does ('0' for
// a number), or 0 at the end or before anything else.
func (d *scanner) PeekKind() jsontext.Kind {
	d.ws()
	if d.i == len(d.b) {
		return 0
	}
	switch c := d.b[d.i]; c {
	case '"', '{', '[', 'n', 't', 'f':
		return jsontext.Kind(c)
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return '0'
	}
	return 0
}

// expect consumes the delimiter c after optional whitespace.
func (d *scanner) expect(c byte) error {
	d.ws()
	if d.i == len(d.b) {
		return errEnd
	}
	if d.b[d.i] != c {
		return fmt.Errorf("%w: want %q at offset %d, got %q", errSyntax, c, d.i, d.b[d.i])
	}
	d.i++
	return nil
}

// readNull consumes a null.
func (d *scanner) readNull() error {
	d.ws()
	return d.literal("null")
}

// open consumes c ('{' or '[') and counts the depth.
func (d *scanner) open(c byte) error {
	if err := d.expect(c); err != nil {
		return err
	}
	if d.depth++; d.depth > maxDepth {
		return errDepth
	}
	return nil
}

// ReadValue reads the next value, validated, and returns it as it is in
// the input (a string with its quotes).
func (d *scanner) ReadValue() (jsontext.Value, error) {
	return d.readValue(true)
}

// readValueFor reads the next value for jsonv2.Unmarshal, which validates
// it again: an object or array is only scanned here (and its depth
// checked against the whole document's limit).
func (d *scanner) readValueFor() (jsontext.Value, error) {
	return d.readValue(false)
}

func (d *scanner) readValue(validate bool) (jsontext.Value, error) {
	d.ws()
	if d.i == len(d.b) {
		return nil, errEnd
	}
	start := d.i
	var err error
	switch c := d.b[d.i]; c {
	case '"':
		_, err = d.scanString()
	case '{', '[':
		err = d.skipComposite(validate)
	case 't':
		err = d.literal("true")
	case 'f':
		err = d.literal("false")
	case 'n':
		err = d.literal("null")
	default:
		err = d.scanNumber()
	}
	if err != nil {
		return nil, err
	}
	return d.b[start:d.i], nil
}

// SkipValue reads the next value, validated, and drops it.
func (d *scanner) SkipValue() error {
	_, err := d.ReadValue()
	return err
}

func (d *scanner) literal(lit string) error {
	if !bytes.HasPrefix(d.b[d.i:], []byte(lit)) {
		return errSyntax
	}
	d.i += len(lit)
	return nil
}

// scanString validates the string at the cursor, moves past it and
// returns its contents: a slice of the input when it has no escapes, else
// what jsontext.AppendUnquote (which validates them) makes of it.
func (d *scanner) scanString() (contents []byte, err error) {
	start := d.i
	escaped := false
	d.i++ // the quote
	for d.i < len(d.b) {
		if stringPlain[d.b[d.i]] {
			d.i++
			continue
		}
		c := d.b[d.i]
		switch {
		case c == '"':
			d.i++
			if escaped {
				// \u escapes: valid hex, surrogates in pairs.
				return jsontext.AppendUnquote(nil, d.b[start:d.i])
			}
			return d.b[start+1 : d.i-1], nil
		case c == '\\':
			escaped = true
			d.i += 2 // the escaped byte is checked by AppendUnquote
		case c < 0x20:
			return nil, fmt.Errorf("%w: control character in a string at offset %d", errSyntax, d.i)
		default: // not ASCII
			r, n := utf8.DecodeRune(d.b[d.i:])
			if r == utf8.RuneError && n == 1 {
				return nil, fmt.Errorf("%w: invalid UTF-8 at offset %d", errSyntax, d.i)
			}
			d.i += n
		}
	}
	return nil, errEnd
}

// stringPlain marks the bytes a string holds as they are: printable ASCII
// but the quote and the backslash (one load per byte on the common path).
var stringPlain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// scanNumber validates a number as RFC 8259 has it:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (d *scanner) scanNumber() error {
	b, i := d.b, d.i
	digits := func() int {
		n := 0
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
			n++
		}
		return n
	}
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case digits() == 0:
		return errNotValue
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return errSyntax
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return errSyntax
		}
	}
	d.i = i
	return nil
}

// skipComposite moves past the object or array at the cursor: a quick
// scan finds its end and its depth, then jsontext validates it (the
// members the hand decoders do not read are few and small, except a real
// review's managedFields).
func (d *scanner) skipComposite(validate bool) error {
	start, depth, deepest := d.i, 0, 0
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case '"':
			end := bytes.IndexByte(d.b[d.i+1:], '"')
			for end >= 0 && escapedQuote(d.b, d.i+1+end) {
				next := bytes.IndexByte(d.b[d.i+1+end+1:], '"')
				if next < 0 {
					end = -1
					break
				}
				end += 1 + next
			}
			if end < 0 {
				return errEnd
			}
			d.i += end + 2
			continue
		case '{', '[':
			if depth++; depth > deepest {
				deepest = depth
			}
		case '}', ']':
			depth--
		}
		d.i++
		if depth == 0 {
			if d.depth+deepest > maxDepth {
				return errDepth
			}
			if validate && !jsontext.Value(d.b[start:d.i]).IsValid() {
				return errSyntax
			}
			return nil
		}
	}
	return errEnd
}

// escapedQuote reports whether the quote at b[q] is escaped: preceded by
// an odd number of backslashes.
func escapedQuote(b []byte, q int) bool {
	n := 0
	for p := q - 1; p >= 0 && b[p] == '\\'; p-- {
		n++
	}
	return n%2 == 1
}

// readString reads a string (or object name) unquoted, without a copy
// when it has no escapes: a slice of the input, valid as long as it.
func (d *scanner) readString() ([]byte, error) {
	d.ws()
	if d.i == len(d.b) {
		return nil, errEnd
	}
	if d.b[d.i] != '"' {
		return nil, fmt.Errorf("%w: want a string at offset %d", errSyntax, d.i)
	}
	return d.scanString()
}

// object reads an object's members, calling member with each name
// (unquoted) to read its value. null leaves the target as it is: jsonv2
// zeroes it, and every target here is new (zero). A name seen twice is an
// error, as in jsontext.
func object(dec *scanner, member func(name []byte) error) error {
	if dec.PeekKind() == 'n' {
		return dec.readNull()
	}
	if err := dec.open('{'); err != nil {
		return err
	}
	if dec.closed('}') {
		return nil
	}
	var seen names
	for {
		name, err := dec.readString()
		if err != nil {
			return err
		}
		if !seen.add(name) {
			return errDupName
		}
		if err := dec.expect(':'); err != nil {
			return err
		}
		if err := member(name); err != nil {
			return err
		}
		if more, err := dec.more('}'); !more {
			return err
		}
	}
}

// closed consumes close if it comes next (an empty object or array).
func (d *scanner) closed(close byte) bool {
	d.ws()
	if d.i < len(d.b) && d.b[d.i] == close {
		d.i++
		d.depth--
		return true
	}
	return false
}

// more reads what follows a member or element: a comma (true) or close
// (false, nil).
func (d *scanner) more(close byte) (bool, error) {
	d.ws()
	if d.i == len(d.b) {
		return false, errEnd
	}
	switch d.b[d.i] {
	case ',':
		d.i++
		return true, nil
	case close:
		d.i++
		d.depth--
		return false, nil
	}
	return false, fmt.Errorf("%w: want ',' or %q at offset %d", errSyntax, close, d.i)
}

// names are an object's names so far: a few compared one by one (the
// objects read here have at most a dozen members), a map beyond.
type names struct {
	few  [16][]byte
	n    int
	many map[string]struct{}
}

// add records name; false if it was there.
func (s *names) add(name []byte) bool {
	if s.many != nil {
		if _, ok := s.many[string(name)]; ok {
			return false
		}
		s.many[string(name)] = struct{}{}
		return true
	}
	for _, seen := range s.few[:s.n] {
		if bytes.Equal(seen, name) {
			return false
		}
	}
	if s.n < len(s.few) {
		s.few[s.n] = name
		s.n++
		return true
	}
	s.many = make(map[string]struct{}, 2*len(s.few))
	for _, seen := range s.few {
		s.many[string(seen)] = struct{}{}
	}
	s.many[string(name)] = struct{}{}
	return true
}

// elements reads an array, calling elem for each element.
func elements(dec *scanner, elem func() error) error {
	if err := dec.open('['); err != nil {
		return err
	}
	if dec.closed(']') {
		return nil
	}
	for {
		if err := elem(); err != nil {
			return err
		}
		if more, err := dec.more(']'); !more {
			return err
		}
	}
}

// end checks that only whitespace follows the value read.
func (d *scanner) end() error {
	d.ws()
	if d.i != len(d.b) {
		return fmt.Errorf("%w: data after the value at offset %d", errSyntax, d.i)
	}
	return nil
}
