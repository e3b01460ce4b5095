package api

// openapi.gen.go holds the request and response types generated from
// openapi.yaml; it is checked in. Regenerate after changing the document:
//
//	go generate ./controlplane/api

//go:generate go tool oapi-codegen -config oapi-codegen.yaml openapi.yaml
