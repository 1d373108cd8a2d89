// Package optlist reads and writes govmm's device option lists,
// key=value,key=value (--disk, --net, --vsock, --device, and the specs the
// control socket's add-disk and add-net take and a snapshot records), in
// one syntax for the command line and the API alike.
//
// It exists because an option's value may be a path or free text (an
// image's path, a disk's serial, a TAP's name), which can hold a comma,
// the very character the list is split on. As in QEMU's option lists, two
// commas in a row stand for one literal comma: path=/img/a,,b.img is the
// path /img/a,b.img. A run of commas is read from the left, pair by pair,
// so ",,," is a literal comma followed by the end of the option. Without
// ",," a list splits exactly as strings.Split(s, ",") splits it.
package optlist

import (
	"errors"
	"fmt"
	"strings"
)

// Option is one key=value item of a list.
type Option struct {
	Key, Value string
}

// Split splits s at its lone commas and reads each ",," as a literal
// comma. It never fails: an empty item (s empty, or a trailing lone
// comma) is an empty string, and items without "=" are the caller's to
// judge, as they were when the caller split s with strings.Split.
func Split(s string) []string {
	if !strings.Contains(s, ",,") {
		return strings.Split(s, ",")
	}
	var items []string
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != ',' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == ',' {
			b.WriteByte(',')
			i++
			continue
		}
		items = append(items, b.String())
		b.Reset()
	}
	return append(items, b.String())
}

// ErrTrailingComma is Parse's error for a list that ends in a lone comma
// (an empty last option).
var ErrTrailingComma = errors.New("the list ends in a lone comma (write ,, for a comma in a value)")

// Parse splits s into its options (Split), each cut at its first "=":
// a value may hold "=", and a comma written as ",,". An empty list, an
// empty option, an option without "=" or with an empty key is an error
// that quotes the option; callers add which flag and list it was.
func Parse(s string) ([]Option, error) {
	items := Split(s)
	opts := make([]Option, 0, len(items))
	for i, it := range items {
		if it == "" {
			switch {
			case len(items) == 1:
				return nil, errors.New("no options (want key=value[,key=value...])")
			case i == len(items)-1:
				return nil, ErrTrailingComma
			default: // only the first can be: two commas inside make one
				return nil, errors.New("the list starts with a lone comma")
			}
		}
		k, v, ok := strings.Cut(it, "=")
		switch {
		case !ok:
			return nil, fmt.Errorf("%q is not key=value", it)
		case k == "":
			return nil, fmt.Errorf("%q has no key before its =", it)
		}
		opts = append(opts, Option{Key: k, Value: v})
	}
	return opts, nil
}

// Escape is v as an option's value: each comma doubled.
func Escape(v string) string {
	return strings.ReplaceAll(v, ",", ",,")
}

// Join is Parse's inverse: the options as key=value items, values
// escaped, separated by lone commas. A key must be non-empty and hold
// neither "," nor "=" (keys are the callers' constants); Join panics on
// one that does, as it could not be read back.
func Join(opts ...Option) string {
	var b strings.Builder
	for i, o := range opts {
		if o.Key == "" || strings.ContainsAny(o.Key, ",=") {
			panic(fmt.Sprintf("optlist: key %q cannot be written", o.Key))
		}
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(o.Key)
		b.WriteByte('=')
		b.WriteString(Escape(o.Value))
	}
	return b.String()
}
