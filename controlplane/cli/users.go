package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

func newRoleCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "role", Short: "Manage custom roles (permissions, optionally scoped by labels)"}
	var perms []string
	var description, jobSel, targetSel string
	role := func(name string) *opsconductorv1.Role {
		return &opsconductorv1.Role{Name: name, Description: description, Permissions: perms, JobSelector: jobSel, TargetSelector: targetSel}
	}
	create := &cobra.Command{
		Use:   "create NAME --permission PERM...",
		Short: "Create a custom role",
		Long: `Create a custom role from permissions, optionally scoped: its permissions
then apply only to jobs whose labels match --job-selector and to agents
whose labels match --target-selector.

  opsconductor role create web-dev --permission jobs:read,jobs:write,executions:run \
      --job-selector team=web --target-selector role=web`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := g.auth().CreateRole(cmd.Context(), connect.NewRequest(&opsconductorv1.CreateRoleRequest{Role: role(args[0])}))
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "role %s created\n", resp.Msg.GetRole().GetName())
			return nil
		},
	}
	update := &cobra.Command{
		Use:   "update NAME --permission PERM...",
		Short: "Replace a custom role's definition",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := g.auth().UpdateRole(cmd.Context(), connect.NewRequest(&opsconductorv1.UpdateRoleRequest{Role: role(args[0])})); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "role %s updated\n", args[0])
			return nil
		},
	}
	for _, c := range []*cobra.Command{create, update} {
		c.Flags().StringSliceVar(&perms, "permission", nil, "permission to grant (repeat or comma-separate)")
		c.Flags().StringVar(&description, "description", "", "what the role is for")
		c.Flags().StringVar(&jobSel, "job-selector", "", "only jobs with these labels, e.g. team=web")
		c.Flags().StringVar(&targetSel, "target-selector", "", "only agents with these labels, e.g. role=web")
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List built-in and custom roles",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := g.auth().ListRoles(cmd.Context(), connect.NewRequest(&opsconductorv1.ListRolesRequest{}))
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tKIND\tJOBS\tTARGETS\tPERMISSIONS")
			for _, r := range resp.Msg.GetRoles() {
				kind := "custom"
				if r.GetBuiltin() {
					kind = "built-in"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.GetName(), kind, orAll(r.GetJobSelector()), orAll(r.GetTargetSelector()), strings.Join(r.GetPermissions(), ","))
			}
			return tw.Flush()
		},
	}
	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a custom role no user or token still has",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := g.auth().DeleteRole(cmd.Context(), connect.NewRequest(&opsconductorv1.DeleteRoleRequest{Name: args[0]})); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "role %s deleted\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, update, list, del)
	return cmd
}

func orAll(sel string) string {
	if sel == "" {
		return "all"
	}
	return sel
}

func newUserCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "user", Short: "Manage users (their API tokens and JWTs get their roles)"}
	var roles []string
	var disabled bool
	create := &cobra.Command{
		Use:   "create NAME --role ROLE...",
		Short: "Create a user",
		Long: `Create a user. Tokens made with ` + "`opsconductor token create NAME --user USER`" + `
and JWTs whose sub is the user's name get the user's roles.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := g.auth().CreateUser(cmd.Context(), connect.NewRequest(&opsconductorv1.CreateUserRequest{User: &opsconductorv1.User{Name: args[0], Roles: roles}})); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "user %s created with roles %s\n", args[0], strings.Join(roles, ","))
			return nil
		},
	}
	create.Flags().StringSliceVar(&roles, "role", nil, "role to give (repeat or comma-separate)")
	update := &cobra.Command{
		Use:   "update NAME --role ROLE... [--disabled]",
		Short: "Replace a user's roles, or disable it (its tokens then fail)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			u := &opsconductorv1.User{Name: args[0], Roles: roles, Disabled: disabled}
			if _, err := g.auth().UpdateUser(cmd.Context(), connect.NewRequest(&opsconductorv1.UpdateUserRequest{User: u})); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "user %s updated\n", args[0])
			return nil
		},
	}
	update.Flags().StringSliceVar(&roles, "role", nil, "the user's roles from now on")
	update.Flags().BoolVar(&disabled, "disabled", false, "disable the user")
	list := &cobra.Command{
		Use:   "list",
		Short: "List users",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := g.auth().ListUsers(cmd.Context(), connect.NewRequest(&opsconductorv1.ListUsersRequest{}))
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(resp.Msg)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tROLES\tSTATE")
			for _, u := range resp.Msg.GetUsers() {
				state := "active"
				if u.GetDisabled() {
					state = "disabled"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", u.GetName(), strings.Join(u.GetRoles(), ","), state)
			}
			return tw.Flush()
		},
	}
	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a user and revoke its API tokens",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := g.auth().DeleteUser(cmd.Context(), connect.NewRequest(&opsconductorv1.DeleteUserRequest{Name: args[0]})); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "user %s deleted; its tokens are revoked\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, update, list, del)
	return cmd
}
