package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/fleetplane/fleetplane/controlplane"
)

// --- regions (000005) ---

const regionColumns = `name, display_name, leaf_urls, client_urls, ca_bundle, nodes, created_at, updated_at`

func scanRegion(row pgx.Row) (*controlplane.Region, error) {
	r := &controlplane.Region{}
	err := row.Scan(&r.Name, &r.DisplayName, &r.LeafURLs, &r.ClientURLs, &r.CABundle, &r.Nodes, &r.CreatedAt, &r.UpdatedAt)
	if err != nil {
		return nil, err
	}
	r.LeafURLs, r.ClientURLs, r.Nodes = nonNil(r.LeafURLs), nonNil(r.ClientURLs), nonNil(r.Nodes)
	return r, nil
}

// UpsertRegion inserts r or replaces every field of the region named
// r.Name (keeping its CreatedAt), and sets r's CreatedAt and UpdatedAt.
// The CHECKs guard the name and display name; validate the rest with
// Region.Validate first.
func (s *Store) UpsertRegion(ctx context.Context, r *controlplane.Region) error {
	err := s.db.QueryRow(ctx, `
		INSERT INTO regions (name, display_name, leaf_urls, client_urls, ca_bundle, nodes)
		VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (name) DO UPDATE SET
			display_name = EXCLUDED.display_name, leaf_urls = EXCLUDED.leaf_urls,
			client_urls = EXCLUDED.client_urls, ca_bundle = EXCLUDED.ca_bundle,
			nodes = EXCLUDED.nodes, updated_at = now()
		RETURNING created_at, updated_at`,
		r.Name, r.DisplayName, nonNil(r.LeafURLs), nonNil(r.ClientURLs), r.CABundle, nonNil(r.Nodes),
	).Scan(&r.CreatedAt, &r.UpdatedAt)
	return translate(err, "region not found")
}

// FindRegions lists every region by name.
func (s *Store) FindRegions(ctx context.Context) ([]*controlplane.Region, error) {
	rows, err := s.db.Query(ctx, `SELECT `+regionColumns+` FROM regions ORDER BY name`)
	rs, err := collect(rows, err, scanRegion)
	if err != nil {
		return nil, translate(err, "region not found")
	}
	return rs, nil
}

// FindRegion returns the region called name.
func (s *Store) FindRegion(ctx context.Context, name string) (*controlplane.Region, error) {
	r, err := scanRegion(s.db.QueryRow(ctx, `SELECT `+regionColumns+` FROM regions WHERE name = $1`, name))
	if err != nil {
		return nil, translate(err, "region "+quoteName(name)+" not found")
	}
	return r, nil
}

func quoteName(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return `"` + s + `"`
}
