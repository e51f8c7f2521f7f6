package kv_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/edgectl/edgectl/ghost/seeds/internal/seedtest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost/seeds/kv"
)

// seed is the interface the Ghost calls, restated here so the test does not import ghost.
type seed interface {
	Info() bus.SeedInfo
	Execute(ctx context.Context, req *bus.SeedExecute) (bus.Result, error)
}

var _ seed = kv.New()

func exec(s seed, op string, args map[string]string) (bus.Result, error) {
	return s.Execute(context.Background(), &bus.SeedExecute{SeedID: kv.ID, Operation: op, Args: args})
}

func kvArgs(kvs ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kvs); i += 2 {
		m[kvs[i]] = kvs[i+1]
	}
	return m
}

// TestExecute runs one scenario step by step on one store: each step sees the state the
// steps before it left.
func TestExecute(t *testing.T) {
	type step struct {
		op     string
		args   map[string]string
		status string
		stdout string
		errIs  error  // a plain error matching this is expected
		field  string // a semantic refusal of this field is expected
	}
	steps := []step{
		{op: "list", status: kv.StatusOK, stdout: `[]`},
		{op: "get", args: kvArgs("key", "missing"), status: kv.StatusNotFound, errIs: kv.ErrKeyNotFound},
		{op: "put", args: kvArgs("key", "app/version", "value", "1.4.2"), status: kv.StatusOK, stdout: `{"key":"app/version","bytes":5}`},
		{op: "put", args: kvArgs("key", "app/version", "value", "1.4.2"), status: kv.StatusOK, stdout: `{"key":"app/version","bytes":5}`},
		{op: "get", args: kvArgs("key", "app/version"), status: kv.StatusOK, stdout: "1.4.2"},
		{op: "put", args: kvArgs("key", "app/name", "value", "line one\nline two\n"), status: kv.StatusOK, stdout: `{"key":"app/name","bytes":18}`},
		{op: "get", args: kvArgs("key", "app/name"), status: kv.StatusOK, stdout: "line one\nline two\n"},
		{op: "put", args: kvArgs("key", "empty", "value", ""), status: kv.StatusOK, stdout: `{"key":"empty","bytes":0}`},
		{op: "get", args: kvArgs("key", "empty"), status: kv.StatusOK, stdout: ""},
		{op: "list", status: kv.StatusOK, stdout: `["app/name","app/version","empty"]`},
		{op: "list", args: kvArgs("prefix", "app/"), status: kv.StatusOK, stdout: `["app/name","app/version"]`},
		{op: "list", args: kvArgs("prefix", "zzz"), status: kv.StatusOK, stdout: `[]`},
		{op: "incr", args: kvArgs("key", "counter"), status: kv.StatusOK, stdout: "1"},
		{op: "incr", args: kvArgs("key", "counter"), status: kv.StatusOK, stdout: "2"},
		{op: "incr", args: kvArgs("key", "counter"), status: kv.StatusOK, stdout: "3"},
		{op: "get", args: kvArgs("key", "counter"), status: kv.StatusOK, stdout: "3"},
		{op: "put", args: kvArgs("key", "neg", "value", "-2"), status: kv.StatusOK, stdout: `{"key":"neg","bytes":2}`},
		{op: "incr", args: kvArgs("key", "neg"), status: kv.StatusOK, stdout: "-1"},
		{op: "incr", args: kvArgs("key", "app/version"), status: kv.StatusFailed, errIs: kv.ErrNotInteger},
		{op: "get", args: kvArgs("key", "app/version"), status: kv.StatusOK, stdout: "1.4.2"},
		{op: "put", args: kvArgs("key", "big", "value", "9223372036854775807"), status: kv.StatusOK, stdout: `{"key":"big","bytes":19}`},
		{op: "incr", args: kvArgs("key", "big"), status: kv.StatusFailed},
		{op: "delete", args: kvArgs("key", "app/version"), status: kv.StatusOK, stdout: `{"key":"app/version","deleted":true}`},
		{op: "delete", args: kvArgs("key", "app/version"), status: kv.StatusOK, stdout: `{"key":"app/version","deleted":false}`},
		{op: "get", args: kvArgs("key", "app/version"), status: kv.StatusNotFound, errIs: kv.ErrKeyNotFound},
		{op: "list", args: kvArgs("prefix", "app"), status: kv.StatusOK, stdout: `["app/name"]`},
		{op: "put", args: kvArgs("key", "k", "value", strings.Repeat("v", kv.MaxValueSize+1)), status: kv.StatusFailed, field: "args.value"},
		{op: "put", args: kvArgs("key", "k"), status: kv.StatusFailed, field: "args.value"},
		{op: "get", status: kv.StatusFailed, field: "args.key"},
		{op: "incr", args: kvArgs("key", ""), status: kv.StatusFailed, field: "args.key"},
		{op: "drop", status: kv.StatusFailed, field: "operation"},
	}
	s := kv.New()
	for i, st := range steps {
		t.Run(fmt.Sprintf("%02d_%s", i, st.op), func(t *testing.T) {
			res, err := exec(s, st.op, st.args)
			seedtest.CheckResult(t, res, err, seedtest.Want{Status: st.status, Stdout: st.stdout, Field: st.field, ErrIs: st.errIs})
		})
	}
	if v, ok := s.Value("counter"); !ok || v != "3" {
		t.Fatalf("Value(counter) = %q, %v; want 3, true", v, ok)
	}
	if _, ok := s.Value("app/version"); ok {
		t.Fatal("Value(app/version) found after delete")
	}
}

func TestListIsJSON(t *testing.T) {
	tests := []struct {
		name      string
		keys      int
		keyLen    int
		truncated bool
	}{
		{name: "none", keys: 0, keyLen: 8},
		{name: "a few", keys: 5, keyLen: 8},
		{name: "more than fits in stdout", keys: 400, keyLen: 256, truncated: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := kv.New()
			var want []string
			for i := range tc.keys {
				k := fmt.Sprintf("%05d", i) + strings.Repeat("k", tc.keyLen-5)
				want = append(want, k)
				if _, err := exec(s, "put", kvArgs("key", k, "value", "v")); err != nil {
					t.Fatal(err)
				}
			}
			res, err := exec(s, "list", nil)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			if err := json.Unmarshal([]byte(res.Stdout), &got); err != nil {
				t.Fatalf("stdout is not a JSON array: %v: %.100q", err, res.Stdout)
			}
			if len(res.Stdout) > bus.MaxOutput {
				t.Fatalf("stdout is %d bytes, over %d", len(res.Stdout), bus.MaxOutput)
			}
			if res.Truncated != tc.truncated {
				t.Fatalf("truncated = %v, want %v", res.Truncated, tc.truncated)
			}
			if !slices.IsSorted(got) {
				t.Fatal("keys are not sorted")
			}
			if !tc.truncated && !slices.Equal(got, want) {
				t.Fatalf("keys = %v, want %v", got, want)
			}
			if tc.truncated && (len(got) == 0 || len(got) >= len(want) || !slices.Equal(got, want[:len(got)])) {
				t.Fatalf("got %d keys, want a sorted head of the %d stored", len(got), len(want))
			}
		})
	}
}

func TestIncrConcurrent(t *testing.T) {
	s := kv.New()
	const n = 50
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if _, err := exec(s, "incr", kvArgs("key", "hits")); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if v, _ := s.Value("hits"); v != fmt.Sprint(n) {
		t.Fatalf("hits = %q, want %d", v, n)
	}
}

func TestCancelledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s := kv.New()
	res, err := s.Execute(ctx, &bus.SeedExecute{Operation: "incr", Args: kvArgs("key", "a")})
	if !errors.Is(err, context.Canceled) || res.ExitCode != 1 {
		t.Fatalf("result = %+v, err = %v; want context.Canceled", res, err)
	}
	if _, ok := s.Value("a"); ok {
		t.Fatal("incr ran under a cancelled context")
	}
}

func TestDeclaration(t *testing.T) {
	seedtest.CheckDeclaration(t, kv.New().Info(), kv.ID, map[string]bool{"put": true, "get": true, "delete": true, "list": true, "incr": false})
}

func TestPatterns(t *testing.T) {
	tests := []struct {
		op, param, value string
		match            bool
	}{
		{"put", "key", "app/v1.2_x-y", true},
		{"put", "key", strings.Repeat("k", 256), true},
		{"put", "key", strings.Repeat("k", 257), false},
		{"put", "key", "", false},
		{"put", "key", "a b", false},
		{"put", "key", "a\nb", false},
		{"put", "value", "", true},
		{"put", "value", "multi\nline", true},
		{"list", "prefix", "", true},
		{"list", "prefix", "app/", true},
		{"list", "prefix", "a*", false},
	}
	info := kv.New().Info()
	for _, tc := range tests {
		op, ok := info.Operation(tc.op)
		if !ok {
			t.Fatalf("operation %s is not declared", tc.op)
		}
		var pattern string
		for _, p := range op.Params {
			if p.Name == tc.param {
				pattern = p.Pattern
			}
		}
		re := regexp.MustCompile("^(?:" + pattern + ")$")
		if got := re.MatchString(tc.value); got != tc.match {
			t.Errorf("%s.%s pattern %q on %.40q: match = %v, want %v", tc.op, tc.param, pattern, tc.value, got, tc.match)
		}
	}
}

// The store is bounded: past MaxKeys a new key is refused (an existing one may still be
// replaced), and past MaxBytes a value that would grow the store is refused; a delete
// makes room again. Anyone allowed to issue commands cannot fill the Ghost's memory.
func TestStoreIsBounded(t *testing.T) {
	s := kv.New()
	for i := range kv.MaxKeys {
		if _, err := exec(s, "put", map[string]string{"key": fmt.Sprintf("k%d", i), "value": "v"}); err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
	}
	if _, err := exec(s, "put", map[string]string{"key": "one-more", "value": "v"}); err == nil || !strings.Contains(err.Error(), "keys, its most") {
		t.Fatalf("a new key past %d: %v, want it refused", kv.MaxKeys, err)
	}
	if _, err := exec(s, "incr", map[string]string{"key": "one-more"}); err == nil {
		t.Fatal("incr of a new key past the most keys was accepted")
	}
	if _, err := exec(s, "put", map[string]string{"key": "k0", "value": "replaced"}); err != nil {
		t.Fatalf("replacing a key of a full store: %v", err)
	}
	if _, err := exec(s, "delete", map[string]string{"key": "k1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := exec(s, "put", map[string]string{"key": "one-more", "value": "v"}); err != nil {
		t.Fatalf("a new key once one was deleted: %v", err)
	}

	big := strings.Repeat("x", kv.MaxValueSize)
	s = kv.New()
	n := 0
	for ; ; n++ {
		_, err := exec(s, "put", map[string]string{"key": fmt.Sprintf("b%d", n), "value": big})
		if err != nil {
			if !strings.Contains(err.Error(), "past its most") {
				t.Fatalf("put %d: %v, want the byte bound", n, err)
			}
			break
		}
		if n > kv.MaxBytes/kv.MaxValueSize {
			t.Fatalf("%d values of %d bytes stored, past the %d bytes bound", n+1, kv.MaxValueSize, kv.MaxBytes)
		}
	}
	if _, err := exec(s, "put", map[string]string{"key": "b0", "value": "small"}); err != nil {
		t.Fatalf("shrinking a value of a full store: %v", err)
	}
}
