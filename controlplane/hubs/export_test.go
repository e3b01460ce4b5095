package hubs

// Small pages, so that the presence tests page through CONNZ with a few
// vehicles and look single links up too.
func init() {
	pagedFillAbove = 2
	connzPageSize = 2
}
