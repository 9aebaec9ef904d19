package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestLoadEnvFile: KEY=VALUE lines land in the environment (a variable
// already set wins), comments and blanks are skipped, a bad line is
// refused with its number.
func TestLoadEnvFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "agent.env")
	if err := os.WriteFile(good, []byte("# the agent\r\nOPSC_TEST_A=one=1\r\n\r\nOPSC_TEST_B=two\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("OPSC_TEST_B", "already")
	t.Setenv("OPSC_TEST_A", "")
	os.Unsetenv("OPSC_TEST_A")
	if err := loadEnvFile([]string{"--labels", "x=y", "--env-file", good}); err != nil {
		t.Fatal(err)
	}
	if a, b := os.Getenv("OPSC_TEST_A"), os.Getenv("OPSC_TEST_B"); a != "one=1" || b != "already" {
		t.Fatalf("A=%q B=%q", a, b)
	}
	bad := filepath.Join(dir, "bad.env")
	if err := os.WriteFile(bad, []byte("OK=1\nnot a pair\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := loadEnvFile([]string{"--env-file=" + bad}); err == nil || err.Error() != "--env-file "+bad+" line 2: want KEY=VALUE" {
		t.Fatalf("a bad line: %v", err)
	}
	if err := loadEnvFile([]string{"--server", "x"}); err != nil {
		t.Fatalf("no env file: %v", err)
	}
}
