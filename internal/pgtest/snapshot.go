package pgtest

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Snapshot fingerprints every table of the public schema (row count and an
// MD5 over its rows), so a test can prove that a refused request changed
// nothing: take one before, one after, and compare with DiffSnapshots.
// ignore names "table.column"s that change on reads (last-used stamps).
func Snapshot(tb testing.TB, pool *pgxpool.Pool, ignore ...string) map[string]string {
	tb.Helper()
	ctx := context.Background()
	rows, err := pool.Query(ctx, `
		SELECT c.table_name, c.column_name
		FROM information_schema.columns c
		JOIN information_schema.tables t USING (table_schema, table_name)
		WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'
		ORDER BY c.table_name, c.ordinal_position`)
	if err != nil {
		tb.Fatalf("snapshot: %v", err)
	}
	cols := map[string][]string{}
	var names []string
	for rows.Next() {
		var table, col string
		if err := rows.Scan(&table, &col); err != nil {
			tb.Fatalf("snapshot: %v", err)
		}
		if _, seen := cols[table]; !seen {
			names = append(names, table)
			cols[table] = nil
		}
		if !slices.Contains(ignore, table+"."+col) {
			cols[table] = append(cols[table], quoteIdent(col))
		}
	}
	if err := rows.Err(); err != nil {
		tb.Fatalf("snapshot: %v", err)
	}
	if len(names) < 5 {
		tb.Fatalf("snapshot: found only %d tables", len(names))
	}
	snap := map[string]string{}
	for _, table := range names {
		var n int64
		var sum string
		q := fmt.Sprintf(`SELECT count(*), coalesce(md5(string_agg(r::text, E'\n' ORDER BY r::text)), '')
			FROM (SELECT ROW(%s) AS r FROM %s) s`, strings.Join(cols[table], ", "), quoteIdent(table))
		if err := pool.QueryRow(ctx, q).Scan(&n, &sum); err != nil {
			tb.Fatalf("snapshot %s: %v", table, err)
		}
		snap[table] = fmt.Sprintf("%d rows, md5 %s", n, sum)
	}
	return snap
}

// DiffSnapshots describes what differs between two snapshots ("" = nothing).
func DiffSnapshots(a, b map[string]string) string {
	var names []string
	for k := range a {
		names = append(names, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	var out []string
	for _, n := range names {
		if a[n] != b[n] {
			out = append(out, fmt.Sprintf("%s: %s → %s", n, a[n], b[n]))
		}
	}
	return strings.Join(out, "; ")
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
