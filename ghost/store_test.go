package ghost

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/edgectl/edgectl/subjects"
)

func TestStoreUnknownIDs(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.p.Run(ctx, command(t, "t.ok", "run")).Wait()
	if _, err := f.store.GetExecution(ctx, "exe_unknown"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetExecution(unknown) error %v, want ErrNotFound", err)
	}
	if _, err := f.store.GetByCommandID(ctx, "cmd_unknown"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetByCommandID(unknown) error %v, want ErrNotFound", err)
	}
	if _, err := f.store.GetByMessageID(ctx, "msg_unknown"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetByMessageID(unknown) error %v, want ErrNotFound", err)
	}
}

func TestEventIDStableAndDistinct(t *testing.T) {
	a := EventID("g1", "cmd_1")
	if a != EventID("g1", "cmd_1") {
		t.Fatal("EventID is not deterministic")
	}
	for _, other := range []string{EventID("g2", "cmd_1"), EventID("g1", "cmd_2"), EventID("g1c", "md_1")} {
		if other == a {
			t.Fatalf("EventID collides: %s", a)
		}
	}
	if err := subjects.ValidateToken("event_id", a); err != nil || !strings.HasPrefix(a, subjects.PrefixEvent+"_") {
		t.Fatalf("EventID %q is not a prefixed token: %v", a, err)
	}
}
