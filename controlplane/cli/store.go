package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/opsconductor/opsconductor/controlplane/server"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/transfer"
)

// newStoreCmd copies the control plane's state between databases.
func newStoreCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "store", Short: "Export the control plane's database to a file, or import one (SQLite to PostgreSQL)"}
	dbURL := func() string {
		for _, name := range []string{"DATABASE_URL", "OPSCONDUCTOR_DATABASE_URL"} {
			if v := os.Getenv(name); v != "" {
				return v
			}
		}
		return ""
	}
	progress := func(schema, table string, rows int64) {
		fmt.Fprintf(g.stderr, "  %s.%s: %d rows\n", schema, table, rows)
	}

	var fromURL, out string
	export := &cobra.Command{
		Use:   "export --database-url URL --out FILE",
		Short: "Write every service's tables to FILE (gzip'd JSON lines)",
		Long: `Write every service's tables to FILE. Stop the servers first (or accept that
rows written during the export may be missing from it). The file holds
the audit log, sealed secrets and token hashes: keep it as you keep the
database (it is written with mode 0600).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if fromURL == "" {
				fromURL = dbURL()
			}
			if fromURL == "" || out == "" {
				return fmt.Errorf("--database-url (or DATABASE_URL) and --out are required")
			}
			var names []string
			for _, s := range server.Schemas() {
				names = append(names, s.Name)
			}
			// Written 0600 to a new temporary file, synced, then renamed.
			f, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*")
			if err != nil {
				return fmt.Errorf("--out: %w", err)
			}
			defer os.Remove(f.Name()) // nothing left after the rename
			if err := transfer.Export(cmd.Context(), fromURL, names, f, progress); err != nil {
				f.Close()
				return err
			}
			if err := f.Sync(); err != nil {
				f.Close()
				return fmt.Errorf("--out: %w", err)
			}
			if err := f.Close(); err != nil {
				return fmt.Errorf("--out: %w", err)
			}
			if err := os.Rename(f.Name(), out); err != nil {
				return fmt.Errorf("--out: %w", err)
			}
			fmt.Fprintf(g.stdout, "exported to %s\n", out)
			return nil
		},
	}
	// Not shown as a default: the URL may hold a password.
	export.Flags().StringVar(&fromURL, "database-url", "", "the database to export: postgres://... or sqlite:DIR (default: env DATABASE_URL)")
	export.Flags().StringVarP(&out, "out", "f", "", "the file to write")

	var toURL, in string
	imp := &cobra.Command{
		Use:   "import --database-url URL --in FILE",
		Short: "Load an export into an empty database (migrated to this version first)",
		Long: `Load a file written by 'opsconductor store export' into the database at
--database-url, which must hold no OpsConductor data yet: run it before
the first server starts on it. Each service's schema is written in one
transaction; the export must come from the same OpsConductor version.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if toURL == "" {
				toURL = dbURL()
			}
			if toURL == "" || in == "" {
				return fmt.Errorf("--database-url (or DATABASE_URL) and --in are required")
			}
			f, err := os.Open(in)
			if err != nil {
				return fmt.Errorf("--in: %w", err)
			}
			defer f.Close()
			migrations := map[string]server.Schema{}
			for _, s := range server.Schemas() {
				migrations[s.Name] = s
			}
			migrate := func(ctx context.Context, db *store.DB, schema string) ([]string, error) {
				s, ok := migrations[schema]
				if !ok {
					return nil, fmt.Errorf("the export has a schema %s this version does not know", schema)
				}
				if err := server.MigrateSchema(ctx, db, s.Migrations); err != nil {
					return nil, err
				}
				return store.SeededTables(s.Migrations, db.Dialect())
			}
			if err := transfer.Import(cmd.Context(), toURL, f, migrate, progress); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "imported %s\n", in)
			return nil
		},
	}
	imp.Flags().StringVar(&toURL, "database-url", "", "the database to load into: postgres://... or sqlite:DIR (default: env DATABASE_URL)")
	imp.Flags().StringVarP(&in, "in", "f", "", "the export file")
	cmd.AddCommand(export, imp)
	return cmd
}
