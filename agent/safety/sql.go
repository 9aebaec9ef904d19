package safety

import (
	"strings"
)

// sqlClients run SQL given on their command line or standard input.
// Read-only.
var sqlClients = map[string]bool{
	"psql": true, "mysql": true, "mariadb": true, "sqlite3": true, "sqlcmd": true,
	"osql": true, "isql": true, "clickhouse-client": true, "clickhouse": true,
	"cockroach": true, "duckdb": true, "sqlplus": true, "snowsql": true, "cqlsh": true,
	"usql": true, "pgcli": true, "mycli": true, "litecli": true, "trino": true,
	"presto": true, "spark-sql": true, "beeline": true, "impala-shell": true,
	"invoke-sqlcmd": true,
}

// containerRunners run a command given as their arguments somewhere else
// (docker exec db psql -c ...), so a SQL client may appear among them.
var containerRunners = map[string]bool{
	"docker": true, "podman": true, "nerdctl": true, "kubectl": true, "oc": true,
	"lxc": true, "incus": true, "crictl": true,
}

// sqlHit is one destructive SQL statement.
type sqlHit struct {
	rule     string
	severity Severity
	what     string
}

// sql reports the destructive statements in SQL text that command runs.
func (a *analysis) sql(text, command, snippet string) {
	for _, h := range scanSQL(text) {
		a.find(h.rule, h.severity, Dangerous, h.what, command, snippet)
	}
}

// sqlInCommand looks for SQL in the arguments and standard input of a
// database client.
func (sa *shellAnalysis) sqlInCommand(cmd *shellCmd) {
	if !runsSQLClient(cmd.args) {
		return
	}
	for _, w := range cmd.rest() {
		for _, v := range w.vals {
			sa.sql(sqlArgument(v), cmd.norm, cmd.snippet)
		}
	}
	if cmd.stdin.text != nil {
		full := cmd.norm
		if cmd.stdin.pipeline != "" {
			full = cmd.stdin.pipeline + " | " + cmd.norm
		}
		for _, v := range cmd.stdin.text.vals {
			sa.sql(v, full, cmd.snippet)
		}
	}
}

// runsSQLClient reports whether a command line runs a SQL client, directly
// or through docker exec and the like.
func runsSQLClient(args []word) bool {
	if len(args) == 0 {
		return false
	}
	name, _ := args[0].known()
	name = strings.ToLower(baseName(name))
	if sqlClients[name] {
		return true
	}
	if !containerRunners[name] {
		return false
	}
	for _, w := range args[1:] {
		if v, ok := w.known(); ok && sqlClients[strings.ToLower(baseName(v))] {
			return true
		}
	}
	return false
}

// sqlArgument returns the part of a command-line word that may be SQL:
// the value of --option=value, nothing of other options.
func sqlArgument(v string) string {
	if !strings.HasPrefix(v, "-") {
		return v
	}
	if _, val, ok := strings.Cut(v, "="); ok {
		return val
	}
	return ""
}

// scanSQL finds DROP DATABASE/SCHEMA/TABLE, TRUNCATE, and DELETE or UPDATE
// without WHERE, case-insensitively, outside comments and string literals.
func scanSQL(text string) []sqlHit {
	if !strings.ContainsAny(text, "dDtTuU") {
		return nil
	}
	var hits []sqlHit
	for _, stmt := range strings.Split(stripSQL(text), ";") {
		words := strings.FieldsFunc(stmt, func(r rune) bool {
			return r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '(' || r == ')' || r == ','
		})
		if h, ok := sqlStatement(words); ok {
			hits = append(hits, h)
		}
	}
	return hits
}

func sqlStatement(words []string) (sqlHit, bool) {
	if len(words) == 0 {
		return sqlHit{}, false
	}
	upper := make([]string, len(words))
	for i, w := range words {
		upper[i] = strings.ToUpper(w)
	}
	shown := "SQL " + truncate(strings.Join(words, " "), 80)
	second := ""
	if len(upper) > 1 {
		second = upper[1]
	}
	switch upper[0] {
	case "DROP":
		switch second {
		case "DATABASE", "SCHEMA":
			return sqlHit{"sql.drop-database", Critical, shown + " drops a whole " + strings.ToLower(second)}, true
		case "TABLE":
			return sqlHit{"sql.drop-table", High, shown + " drops a table and its data"}, true
		}
	case "TRUNCATE":
		return sqlHit{"sql.truncate", High, shown + " deletes every row of a table"}, true
	case "DELETE":
		if !contains(upper, "WHERE") {
			return sqlHit{"sql.delete-without-where", High, shown + " has no WHERE and deletes every row"}, true
		}
	case "UPDATE":
		if !contains(upper, "WHERE") {
			return sqlHit{"sql.update-without-where", Medium, shown + " has no WHERE and changes every row"}, true
		}
	}
	return sqlHit{}, false
}

// stripSQL blanks comments (-- and /* */), the contents of string literals
// ('…') and dollar-quoted bodies ($$…$$), so keywords inside them do not
// count. Quoted identifiers ("…", `…`) are kept.
func stripSQL(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case strings.HasPrefix(s[i:], "--"):
			end := strings.IndexByte(s[i:], '\n')
			if end < 0 {
				return b.String()
			}
			i += end
			b.WriteByte('\n')
		case strings.HasPrefix(s[i:], "/*"):
			end := strings.Index(s[i+2:], "*/")
			if end < 0 {
				return b.String()
			}
			i += end + 3
			b.WriteByte(' ')
		case s[i] == '\'':
			j := i + 1
			for j < len(s) && (s[j] != '\'' || j+1 < len(s) && s[j+1] == '\'') {
				if s[j] == '\'' {
					j++
				}
				j++
			}
			i = j
			b.WriteString("''")
		case strings.HasPrefix(s[i:], "$$"):
			end := strings.Index(s[i+2:], "$$")
			if end < 0 {
				return b.String()
			}
			i += end + 3
			b.WriteString("''")
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}
