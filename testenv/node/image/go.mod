// The one program behind the real node's offline images (see main.go); standard library only.
module plumb.dev/testenv/node/image

go 1.25.0
