#!/usr/bin/env bash
# Replace the contents of BRANCH with the files of FOLDER, as one new commit on top of the branch's history
# (or a new orphan branch), and push it. Used by the site workflow for the executed notebooks.
#   bash scripts/push_branch.sh FOLDER BRANCH [REMOTE]
set -euo pipefail
folder=$(cd "$1" && pwd); branch=$2; remote=${3:-origin}
url=$(git remote get-url "$remote")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git -C "$work" init -q
git -C "$work" remote add origin "$url"
auth=$(git config --get-regexp '^http\..*\.extraheader$' | head -n1 | cut -d' ' -f2- || true)
if [ -n "$auth" ]; then git -C "$work" config http.https://github.com/.extraheader "$auth"; fi
if git -C "$work" fetch -q --depth 1 origin "$branch" 2>/dev/null; then
    git -C "$work" checkout -q -b "$branch" FETCH_HEAD
else
    git -C "$work" checkout -q --orphan "$branch"
fi
git -C "$work" rm -rq --ignore-unmatch .
cp -R "$folder"/. "$work"/
git -C "$work" add -A
git -C "$work" -c user.name="coursekit bot" -c user.email="coursekit-bot@users.noreply.github.com" \
    commit -q -m "Executed notebooks of $(git rev-parse --short HEAD)" || { echo "nothing changed on $branch"; exit 0; }
git -C "$work" push -q origin "$branch"
echo "pushed $folder to $branch"
