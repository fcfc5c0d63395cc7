// Stand-in from mlobs/nativebuild/stubs (see its README.md): the module proxy refuses the real module.
module github.com/open-telemetry/opentelemetry-collector-contrib/pkg/ottl/contexts/xprofile

go 1.26.0
