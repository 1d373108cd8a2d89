package optlist

import (
	"reflect"
	"strings"
	"testing"
	"testing/quick"
)

// TestParse: lists with and without ",,", runs of commas read pair by
// pair from the left, and the malformed lists each refused with its own
// message.
func TestParse(t *testing.T) {
	o := func(kv ...string) []Option {
		var out []Option
		for i := 0; i < len(kv); i += 2 {
			out = append(out, Option{kv[i], kv[i+1]})
		}
		return out
	}
	for _, c := range []struct {
		in      string
		want    []Option
		wantErr string
	}{
		{in: "path=/a.img", want: o("path", "/a.img")},
		{in: "path=/a.img,readonly=on,serial=x", want: o("path", "/a.img", "readonly", "on", "serial", "x")},
		{in: "path=/a=b.img,serial=", want: o("path", "/a=b.img", "serial", "")},
		{in: "path=/a,,b.img", want: o("path", "/a,b.img")},
		{in: "path=/a,,b.img,serial=s,,1", want: o("path", "/a,b.img", "serial", "s,1")},
		{in: "path=a,,,serial=b", want: o("path", "a,", "serial", "b")},
		{in: "path=a,,,,serial=b", want: o("path", "a,,serial=b")},
		{in: "path=a,,,,,serial=b", want: o("path", "a,,", "serial", "b")},
		{in: "path=,,", want: o("path", ",")},
		{in: "path=,,,,", want: o("path", ",,")},
		{in: "path=a,,", want: o("path", "a,")},
		{in: "serial=,,a", want: o("serial", ",a")},
		{in: "k=,,,j=", want: o("k", ",", "j", "")},
		{in: "a,,b=c", want: o("a,b", "c")}, // a key with a comma: the caller's unknown option

		{in: "", wantErr: "no options"},
		{in: ",", wantErr: "starts with a lone comma"},
		{in: "path=a,", wantErr: "ends in a lone comma"},
		{in: "path=a,,,", wantErr: "ends in a lone comma"},
		{in: ",path=a", wantErr: "starts with a lone comma"},
		{in: ",,path=a", want: o(",path", "a")}, // the key ",path": the caller's unknown option
		{in: "path", wantErr: `"path" is not key=value`},
		{in: "path=a,readonly", wantErr: `"readonly" is not key=value`},
		{in: "path=a,,readonly", want: o("path", "a,readonly")},
		{in: "=a", wantErr: `"=a" has no key`},
		{in: "path=a,=on", wantErr: `"=on" has no key`},
		{in: ",,,path=a", wantErr: `"," is not key=value`},
	} {
		got, err := Parse(c.in)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("Parse(%q) = %q, %v; want an error with %q", c.in, got, err, c.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("Parse(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

// TestSplitUnchanged: a list without ",," splits as strings.Split splits
// it, empty items included, so that parsers moved to Split accept and
// refuse what they did before.
func TestSplitUnchanged(t *testing.T) {
	f := func(s string) bool {
		s = strings.ReplaceAll(s, ",,", ",x,")
		return reflect.DeepEqual(Split(s), strings.Split(s, ","))
	}
	if err := quick.Check(f, &quick.Config{MaxCount: 5000}); err != nil {
		t.Error(err)
	}
	for _, s := range []string{"", ",", "a,", ",a", "a=b,c", "a,b,c="} {
		if !f(s) {
			t.Errorf("Split(%q) = %q, want %q", s, Split(s), strings.Split(s, ","))
		}
	}
}

// TestJoinRoundTrip: whatever values the options have (commas, "=",
// runs of commas at either end), Parse reads Join's list back as given.
func TestJoinRoundTrip(t *testing.T) {
	keys := []string{"path", "serial", "tap", "k"}
	f := func(vals []string, pick []uint8) bool {
		var opts []Option
		for i, v := range vals {
			k := keys[0]
			if i < len(pick) {
				k = keys[int(pick[i])%len(keys)]
			}
			opts = append(opts, Option{k, v})
		}
		if len(opts) == 0 {
			return true
		}
		got, err := Parse(Join(opts...))
		if err != nil || !reflect.DeepEqual(got, opts) {
			t.Logf("Join %q: Parse = %q, %v", Join(opts...), got, err)
			return false
		}
		return true
	}
	if err := quick.Check(f, &quick.Config{MaxCount: 5000}); err != nil {
		t.Error(err)
	}
	for _, vals := range [][]string{{","}, {",,", ""}, {"a,", ",b"}, {",,,", "=", "a=b,c"}} {
		if !f(vals, []uint8{0, 1, 2}) {
			t.Errorf("values %q do not round-trip", vals)
		}
	}
	if got := Join(Option{"path", "/a,b"}, Option{"serial", "s"}); got != "path=/a,,b,serial=s" {
		t.Errorf("Join = %q", got)
	}
}

// TestJoinRefusesKeys: a key Parse could not read back panics.
func TestJoinRefusesKeys(t *testing.T) {
	for _, k := range []string{"", "a,b", "a=b"} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Join with key %q did not panic", k)
				}
			}()
			Join(Option{k, "v"})
		}()
	}
}
