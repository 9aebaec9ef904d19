package label

import "testing"

func TestParseSelector(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{in: "", want: ""},
		{in: "role=web", want: "role=web"},
		{in: " env = prod , role=web ", want: "env=prod,role=web"},
		{in: "team/x=a.b-c", want: "team/x=a.b-c"},
		{in: "role=", want: "role="},
		{in: "role", wantErr: true},
		{in: "=web", wantErr: true},
		{in: "role=web,role=db", wantErr: true},
		{in: "role=we b", wantErr: true},
		{in: "role=web,", wantErr: true},
		{in: "-x=1", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			sel, err := ParseSelector(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseSelector(%q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			}
			if err == nil && sel.String() != tt.want {
				t.Fatalf("ParseSelector(%q) = %q, want %q", tt.in, sel.String(), tt.want)
			}
		})
	}
}

func TestSelectorMatches(t *testing.T) {
	labels := map[string]string{"role": "web", "env": "prod"}
	tests := []struct {
		sel  string
		want bool
	}{
		{"", true},
		{"role=web", true},
		{"role=web,env=prod", true},
		{"role=db", false},
		{"role=web,zone=a", false},
	}
	for _, tt := range tests {
		sel, err := ParseSelector(tt.sel)
		if err != nil {
			t.Fatal(err)
		}
		if got := sel.Matches(labels); got != tt.want {
			t.Errorf("%q.Matches = %v, want %v", tt.sel, got, tt.want)
		}
	}
}
