package main

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// deploy/config/ghost.toml says it shows every key of a Ghost's config: each key
// loadConfig reads must appear there, set or commented out.
func TestExampleConfigShowsEveryKey(t *testing.T) {
	data, err := os.ReadFile("../../deploy/config/ghost.toml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	typ := reflect.TypeFor[fileConfig]()
	for i := range typ.NumField() {
		key, _, _ := strings.Cut(typ.Field(i).Tag.Get("koanf"), ",")
		if key == "" {
			continue
		}
		shown := regexp.MustCompile(`(?m)^(# )?`+regexp.QuoteMeta(key)+` = `).MatchString(text) ||
			regexp.MustCompile(`(?m)^\[`+regexp.QuoteMeta(key)+`\]`).MatchString(text)
		if !shown {
			t.Errorf("deploy/config/ghost.toml does not show the key %s", key)
		}
	}
}
