package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

func newTokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Create, list and revoke API tokens"}
	var roles []string
	var user string
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create NAME --role ROLE",
		Short: "Create an API token; the secret is printed once",
		Long: `Create a long-lived API token acting as NAME with the given roles
(admin, operator, developer, viewer, auditor). Only a hash is stored: copy
the secret now.

  opsconductor token create ci-runner --role operator --ttl 2160h`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &opsconductorv1.CreateApiTokenRequest{Name: args[0], Roles: roles, User: user}
			if ttl > 0 {
				req.Ttl = durationpbNew(ttl)
			}
			resp, err := g.auth().CreateApiToken(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			fmt.Fprintln(g.stdout, resp.Msg.GetSecret())
			who := "with roles " + strings.Join(roles, ",")
			if user != "" {
				who = "acting as user " + user
			}
			fmt.Fprintf(g.stderr, "token %s (%s) created %s; the secret above is shown only now\n",
				resp.Msg.GetToken().GetName(), resp.Msg.GetToken().GetId(), who)
			return nil
		},
	}
	create.Flags().StringSliceVar(&roles, "role", nil, "role to grant (repeat or comma-separate)")
	create.Flags().DurationVar(&ttl, "ttl", 0, "lifetime; 0 never expires")
	create.Flags().StringVar(&user, "user", "", "act as this user: the token gets the user's roles (then no --role)")

	list := &cobra.Command{
		Use:   "list",
		Short: "List API tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := g.auth().ListApiTokens(cmd.Context(), connect.NewRequest(&opsconductorv1.ListApiTokensRequest{}))
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tROLES\tSTATE\tEXPIRES\tLAST USED\tID")
			for _, t := range resp.Msg.GetTokens() {
				state, expires, used := "active", "never", "never"
				if t.GetRevokeTime() != nil {
					state = "revoked"
				}
				if t.GetExpireTime() != nil {
					expires = t.GetExpireTime().AsTime().Format(time.RFC3339)
					if t.GetExpireTime().AsTime().Before(time.Now()) && state == "active" {
						state = "expired"
					}
				}
				if t.GetLastUsedTime() != nil {
					used = t.GetLastUsedTime().AsTime().Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", t.GetName(), strings.Join(t.GetRoles(), ","), state, expires, used, t.GetId())
			}
			return tw.Flush()
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke an API token; its next call fails",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := g.auth().RevokeApiToken(cmd.Context(), connect.NewRequest(&opsconductorv1.RevokeApiTokenRequest{Id: args[0]})); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "token %s revoked\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}

func newWhoAmICmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "whoami",
		Short: "Show who the control plane thinks you are, and what you may do",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := g.auth().WhoAmI(cmd.Context(), connect.NewRequest(&opsconductorv1.WhoAmIRequest{}))
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			m := resp.Msg
			fmt.Fprintf(g.stdout, "%s (%s)\nroles: %s\npermissions: %s\n", m.GetPrincipal(), m.GetMethod(),
				strings.Join(m.GetRoles(), ", "), strings.Join(m.GetPermissions(), ", "))
			return nil
		},
	}
}
