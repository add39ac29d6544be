module github.com/podmeta/podmeta

go 1.26
